"""``mixlight tune`` on a decoder-only causal LM: a tiny random Llama (GQA) with a byte-level
BPE tokenizer (an HF ``tokenizer.json`` built here, BOS prepended, no EOS), trained on
prompt/answer rows with the loss on the answer alone and scored by rank classification with
each choice's summed log-likelihood after the prompt.

The scores are checked against a one-row-at-a-time loop (no padding, no batching), the
tokenisation against the joined text, the loss against HF's own causal-LM loss, and the
trained adapter against a fresh HF model it is loaded into."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import mixlight as ml  # noqa: E402
from mixlight_tune.frameworks.torch_rows import (  # noqa: E402
    collate,
    pack,
    summed_token_loss,
    token_logits,
)
from mixlight_tune.frameworks.torch_scoring import rank_classification  # noqa: E402
from mixlight_tune.schema import Example  # noqa: E402
from mixlight_tune.text_codec import codec_for, joined  # noqa: E402
from mixlight_tune.tune_cli import dry_run, run  # noqa: E402
from mixlight_tune.tune_config import TuneConfigError, read_config  # noqa: E402
from tests.torch.decoder_models import tiny  # noqa: E402
from tests.tune_case import ROWS  # noqa: E402

TEXTS = [f"Is {n} an even number? {'yes' if n % 2 == 0 else 'no'}" for n in range(40)]
TEXTS += ["Pick the colour: red, green or blue? green", "The sky is blue.", "maybe perhaps"]


def byte_level_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE (a space belongs to the next word's token) with Llama's
    special-token habits: BOS prepended, EOS never added."""
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_llama(vocab: int, seed: int = 0) -> transformers.LlamaForCausalLM:
    """:func:`tests.torch.decoder_models.tiny`'s Llama (GQA) for ``vocab`` tokens. HF's
    initializer range 0.02 leaves a random 32-wide LM head unable to reach confident
    logits (the loss floors near log(vocab) whatever trains below it): 0.2 here."""
    return tiny("llama", seed, vocab_size=vocab, tie_word_embeddings=False, initializer_range=0.2)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def causal_codec(tokenizer):
    return codec_for(tokenizer, causal=True)


@pytest.mark.parametrize(
    "prompt, answer",
    [
        ("Is 4 an even number?", "yes"),
        ("Pick the colour: red, green or blue?", "green"),
        ("The sky is", "blue."),
        ("Ends in a space ", "maybe"),
        ("", "perhaps"),
    ],
)
def test_a_causal_pair_is_the_joined_text_cut_after_the_prompt(tokenizer, prompt, answer):
    head, tail = causal_codec(tokenizer).pair(prompt, answer, None, None)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert head[0] == bos and eos not in head
    assert tail[-1] == eos and eos not in tail[:-1]
    text = tokenizer.decode([*head, *tail[:-1]], skip_special_tokens=True)
    assert text == joined(prompt, answer)
    assert tokenizer.decode(tail[:-1]).strip() == answer


def test_limits_keep_the_prompts_first_and_the_answers_eos(tokenizer):
    codec = causal_codec(tokenizer)
    head, tail = codec.pair("Pick the colour: red, green or blue?", "green or blue", 3, 2)
    full_head, full_tail = codec.pair(
        "Pick the colour: red, green or blue?", "green or blue", None, None
    )
    assert head == full_head[:3]
    assert tail == [full_tail[0], tokenizer.eos_token_id]


def test_the_loss_is_on_the_answer_alone(tokenizer):
    """Labels are -100 on every prompt position and on padding; the summed loss over the
    answer tokens, per token, is HF's own causal-LM loss of the same batch."""
    codec = causal_codec(tokenizer)
    model = tiny_llama(len(tokenizer))
    pairs = [codec.pair(r["inputs"], r["targets"], None, None) for r in ROWS[:4]]
    pairs.append(codec.pair("Pick the colour: red, green or blue?", "green", None, None))
    batch = collate(pairs, pad_id=0, causal=True)
    for row, (head, tail) in zip(batch["labels"].tolist(), pairs, strict=True):
        assert row[: len(head)] == [-100] * len(head)
        assert row[len(head) : len(head) + len(tail)] == tail
        assert set(row[len(head) + len(tail) :]) <= {-100}
    with torch.no_grad():
        summed = summed_token_loss(*token_logits(model, batch, causal=True))
        hf = model(**batch).loss
    tokens = sum(len(tail) for _, tail in pairs)
    torch.testing.assert_close(summed / tokens, hf, atol=1e-6, rtol=1e-6)


def test_a_packed_batch_has_the_loss_of_its_unpacked_rows(tokenizer):
    """Several pairs in one row attend only within themselves: the summed answer loss (and
    HF's own loss of the packed rows) equals the padded batch's."""
    codec = causal_codec(tokenizer)
    model = tiny_llama(len(tokenizer), seed=2)
    pairs = [codec.pair(r["inputs"], r["targets"], None, None) for r in ROWS[:7]]
    pairs.append(codec.pair("Pick the colour: red, green or blue?", "green", None, None))
    plain, packed = collate(pairs, 0, causal=True), pack(pairs, 0, width=24)
    assert packed["input_ids"].shape[0] < len(pairs)  # rows were shared
    tokens = sum(len(a) for _, a in pairs)
    with torch.no_grad():
        want = summed_token_loss(*token_logits(model, plain, causal=True))
        got = summed_token_loss(*token_logits(model, packed, causal=True))
        hf = model(**packed, use_cache=False).loss
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(hf, want / tokens, atol=1e-5, rtol=1e-5)


def loop_scores(model, codec, examples):
    """Each choice's summed log-probability, one unpadded row at a time."""
    out = []
    for e in examples:
        row = []
        for choice in e.choices:
            head, tail = codec.pair(e.inputs, choice, None, None)
            ids = torch.tensor([head + tail])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            row.append(sum(float(logp[len(head) - 1 + i, t]) for i, t in enumerate(tail)))
        out.append(row)
    return out


def test_rank_classification_equals_a_one_row_loop(tokenizer):
    model = tiny_llama(len(tokenizer), seed=3)
    examples = [
        Example("parity", "t", r["inputs"], r["targets"], tuple(r["answer_choices"]), n % 2)
        for n, r in enumerate(ROWS[:5])
    ]
    examples.append(
        Example("colour", "t", "Pick the colour: red, green or blue?", "green",
                ("red", "green", "blue"), 1)
    )  # fmt: skip
    result = rank_classification(model, tokenizer, examples, batch_size=4, routing_sites=[])
    expected = loop_scores(model, causal_codec(tokenizer), examples)
    for got, want in zip(result.scores, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert result.predicted == [int(np.argmax(s)) for s in expected]


def write_config(root: Path, model: Path | None, **overrides) -> Path:
    """A tune config over :data:`ROWS` on ``model`` (``None``: the shipped T5)."""
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    config = (
        {
            "backend": "torch",
            "steps": 60,
            "batch_size": 4,
            "optimizer": "adamw",
            "lr": 1e-2,
            "seed": 1,
            "data": "train.jsonl",
            "eval_data": "train.jsonl",
            "output_dir": "out",
            "progress": False,
            "dropout": 0.0,
            "adapter": {"preset": "molora", "num_experts": 2, "rank": 4},
        }
        | ({} if model is None else {"model": str(model)})
        | overrides
    )
    path = root / "tune.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llama_dir):
    root = tmp_path_factory.mktemp("causal-run")
    return root, run(read_config(write_config(root, llama_dir, steps=150)), lambda _: None)


def test_tuning_a_causal_lm_learns_its_answers(trained, tokenizer, llama_dir):
    """Held-in accuracy far above chance (0.5) after training; the untuned model is the
    row beside it."""
    root, metrics = trained
    examples = [
        Example("parity", "t", r["inputs"], r["targets"], tuple(r["answer_choices"]),
                r["answer_choices"].index(r["targets"]))
        for r in ROWS
    ]  # fmt: skip
    base = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    untuned = np.mean(rank_classification(base, tokenizer, examples, routing_sites=[]).correct)
    assert metrics["eval"]["average"] >= 0.9 > untuned + 0.2, (metrics["eval"], untuned)
    assert np.mean(metrics["losses"][-5:]) < np.mean(metrics["losses"][:5]) / 2
    assert metrics["model_tflops_per_second"] > 0 and metrics["mfu"] is None  # a CPU


def test_the_saved_adapter_scores_the_same_in_a_fresh_model(trained, tokenizer, llama_dir):
    root, metrics = trained
    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    ml.load_adapter(model, metrics["adapter"])
    examples = [
        Example("parity", "t", r["inputs"], r["targets"], tuple(r["answer_choices"]),
                r["answer_choices"].index(r["targets"]))
        for r in ROWS
    ]  # fmt: skip
    result = rank_classification(model, tokenizer, examples)
    assert np.mean(result.correct) == pytest.approx(metrics["eval"]["average"])
    # the routing of the last layer's feed-forward site, over the rows' real tokens
    assert list(result.routing) == ["model.layers.1.mlp.down_proj"]
    mean = result.routing["model.layers.1.mlp.down_proj"]["parity"]
    assert mean.shape == (2,) and mean.sum() == pytest.approx(1.0, abs=1e-5)


def test_accumulation_equals_one_big_step_on_a_causal_lm(tmp_path, llama_dir):
    """The summed-token path (two micro-batches) trains the adapter HF's loss path (one)
    does."""
    adapters = []
    for accum in (1, 2):
        root = tmp_path / f"accum{accum}"
        root.mkdir()
        cfg = read_config(
            write_config(root, llama_dir, steps=3, grad_accum_steps=accum, eval_data=None)
        )
        adapter = run(cfg, lambda _: None)["adapter"]
        adapters.append(ml.read_adapter(adapter).arrays)
    assert adapters[0].keys() == adapters[1].keys()
    for name in adapters[0]:
        np.testing.assert_allclose(adapters[0][name], adapters[1][name], atol=2e-6, err_msg=name)


def test_packing_trains_the_unpacked_adapter(tmp_path, llama_dir):
    adapters = []
    for packing in (False, True):
        root = tmp_path / f"packing-{packing}"
        root.mkdir()
        overrides = dict(steps=3, packing=packing, eval_data=None, grad_accum_steps=2)
        adapter = run(read_config(write_config(root, llama_dir, **overrides)), lambda _: None)
        adapters.append(ml.read_adapter(adapter["adapter"]).arrays)
    for name in adapters[0]:
        np.testing.assert_allclose(adapters[0][name], adapters[1][name], atol=2e-6, err_msg=name)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(adapter={"preset": "mov", "num_experts": 2, "routing": "sequence"}), "sequence"),
        (dict(model=None), "encoder-decoder"),
    ],
)
def test_packing_refuses_what_it_would_get_wrong(tmp_path, llama_dir, overrides, message):
    from mixlight_tune.steps import DemoError

    overrides = dict(overrides)
    model = overrides.pop("model", llama_dir)
    config = write_config(tmp_path, model, steps=2, packing=True, eval_data=None, **overrides)
    with pytest.raises(DemoError, match=f"packing = true.*{message}"):
        run(read_config(config), lambda _: None)


def test_dry_run_estimates_a_causal_lm(tmp_path, llama_dir, capsys):
    resolved = dry_run(read_config(write_config(tmp_path, llama_dir)), lambda _: None)
    memory = resolved["memory_per_device_mib"]
    assert memory["activations"] > 0 and memory["total"] >= memory["base_weights"] > 0


def test_the_jax_backend_refuses_a_causal_lm_before_loading(tmp_path, llama_dir):
    cfg = read_config(write_config(tmp_path, llama_dir, backend="jax"))
    with pytest.raises(TuneConfigError, match='decoder-only .*llama.* backend = "torch"'):
        run(cfg, lambda _: None)


def test_the_shares_of_two_processes_combine_to_the_one_process_result(tokenizer):
    """Evaluation under torchrun: each process scores its share (the last padded with an
    example whose results are dropped); combined, correctness and the token-weighted
    routing means equal one process scoring everything."""
    from types import SimpleNamespace

    from mixlight_tune.frameworks.torch_steps import combine_shares, score_share

    model = tiny_llama(len(tokenizer), seed=4)
    ml.inject(model, ml.MoV(3), seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("router"):
                p.normal_()  # routers that prefer experts differently per token
    examples = [
        Example(f"task{n % 2}", "t", r["inputs"], r["targets"], tuple(r["answer_choices"]),
                r["answer_choices"].index(r["targets"]))
        for n, r in enumerate(ROWS[:5])
    ]  # fmt: skip
    base = SimpleNamespace(codec=causal_codec(tokenizer))
    cfg = SimpleNamespace(eval_batch_size=2, max_input_tokens=None, progress=False)
    whole = combine_shares([score_share(model, base, examples, cfg, 0, 1)], 5)
    shares = [score_share(model, base, examples, cfg, rank, 2) for rank in (0, 1)]
    assert [s[0] for s in shares] == [[0, 1, 2], [3, 4]]
    combined = combine_shares(shares, 5)
    assert combined[0] == whole[0]
    assert whole[1].keys() == {"model.layers.1.mlp.down_proj"}
    for site, by_task in whole[1].items():
        assert by_task.keys() == {"task0", "task1"} == combined[1][site].keys()
        for task, mean in by_task.items():
            np.testing.assert_allclose(combined[1][site][task], mean, atol=2e-5)
