"""Tiny random Hugging Face models of the families mixlight has presets for (hidden 32, two
layers, vocab 128), built from configs: nothing is downloaded."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 128
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_GQA = dict(_COMMON, num_key_value_heads=2)

# family -> (config class, causal-LM (or masked-LM) class, config kwargs)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _GQA),
    "mistral": ("MistralConfig", "MistralForCausalLM", _GQA),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _GQA),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(_GQA, head_dim=16)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(_COMMON, num_key_value_heads=1, head_dim=16)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_GQA, head_dim=16)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", _GQA),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(vocab_size=VOCAB, n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=64,
             bos_token_id=1, pad_token_id=0,
             eos_token_id=2),
    ),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", _COMMON),
    "bert": ("BertConfig", "BertForMaskedLM", _COMMON),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", dict(_COMMON, pad_token_id=1)),
}  # fmt: skip


def tiny(family, seed=0, **overrides):
    """A tiny random model of ``family`` in eval mode; one seed gives one set of weights."""
    config_class, model_class, kwargs = FAMILIES[family]
    config = getattr(transformers, config_class)(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, model_class)(config).eval()


def tokens(seed=0, batch_size=2, length=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch_size, length), generator=g)


def logits(model, ids=None):
    ids = tokens() if ids is None else ids
    with torch.no_grad():
        return model(input_ids=ids).logits.float().numpy()
