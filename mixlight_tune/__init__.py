"""The instruction-tuning demo's framework-free parts: data suite, tokenizer, data files,
report tables and plots. Heavy dependencies (sentencepiece, matplotlib, datasets) are
imported inside the functions that need them."""

from .miniature.suite import Example, Suite, build_suite, pretraining_corpus, span_corruption

__all__ = ["Example", "Suite", "build_suite", "pretraining_corpus", "span_corruption"]
