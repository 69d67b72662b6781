"""An injected model trains under HF Trainer (accelerate underneath) and a plain loop."""

import pytest
import torch

import mixlight as ml
from tests.torch.conftest import tiny_t5


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(2, 100, (n, 6), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i].flip(0)}


def test_hf_trainer_updates_only_the_adapter(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = ml.inject(tiny_t5(), ml.MoV(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        logging_steps=1,
    )
    transformers.Trainer(model=model, args=args, train_dataset=Pairs()).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    assert any(n.endswith("adapters.default.vectors") for n in changed)
    ml.save_adapter(model, tmp_path / "adapter")


def _trainer(model, out, resume_hook=True, eval_dataset=None, **overrides):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from mixlight_torch.hf import adapter_checkpoints

    settings = dict(
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    settings.update(overrides)
    args = transformers.TrainingArguments(**settings)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Pairs(), eval_dataset=eval_dataset
    )
    return adapter_checkpoints(trainer) if resume_hook else trainer


def _adapter(model):
    return {k: v.clone() for k, v in model.state_dict().items() if ".adapters." in k}


def test_trainer_checkpoints_hold_the_adapter_and_resume_from_it(tmp_path):
    """PEFT's behaviour: checkpoints are adapter-only, and resuming continues the same run."""
    transformers = pytest.importorskip("transformers")
    whole = ml.inject(tiny_t5(), ml.MoV(4), seed=0)
    _trainer(whole, tmp_path / "whole").train()
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    assert "mixlight_adapter.safetensors" in files and "README.md" in files
    assert not files & {"model.safetensors", "pytorch_model.bin", "config.json"}
    with pytest.raises(OSError, match="no file named"):  # plain transformers refuses loudly
        transformers.T5ForConditionalGeneration.from_pretrained(checkpoint)

    resumed = ml.inject(tiny_t5(), ml.MoV(4), seed=5)  # other initial values: all must load
    _trainer(resumed, tmp_path / "whole").train(resume_from_checkpoint=str(checkpoint))
    want, got = _adapter(whole), _adapter(resumed)
    assert want.keys() == got.keys() and want
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-6)


def test_trainer_without_the_hook_says_what_it_cannot_find(tmp_path):
    model = ml.inject(tiny_t5(), ml.MoV(4), seed=0)
    _trainer(model, tmp_path, max_steps=2).train()
    fresh = ml.inject(tiny_t5(), ml.MoV(4), seed=0)
    with pytest.raises(ValueError, match="valid checkpoint"):
        _trainer(fresh, tmp_path, resume_hook=False).train(
            resume_from_checkpoint=str(tmp_path / "checkpoint-2")
        )


def test_router_losses_reach_the_models_loss_unless_turned_off():
    from mixlight_torch import aux_loss_in_output

    model = ml.inject(tiny_t5(), ml.MoV(4, router=ml.TopK(2, load_balance_weight=0.5)), seed=0)
    ids = torch.randint(2, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with_aux = model(input_ids=ids, labels=ids).loss
    aux = ml.aux_losses(model)
    assert aux > 0.1
    aux_loss_in_output(model, False)
    plain = model(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(with_aux, plain + aux)
    aux_loss_in_output(model, True)
    first = model(input_ids=ids, labels=ids, return_dict=False)[0]
    torch.testing.assert_close(first, with_aux)
    assert model(input_ids=ids, decoder_input_ids=ids).loss is None  # no labels: no loss
    with_aux.backward()  # the router gets the load-balancing gradient too
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in model.named_parameters()
        if n.endswith(".router")
    )


def test_full_state_dict_keeps_the_base_names(tmp_path):
    """A full checkpoint of an injected model loads into the plain model as the base model,
    with the adapter entries reported as unexpected, never as renamed base weights."""
    plain = tiny_t5()
    model = ml.inject(tiny_t5(), ml.LoRA(2), seed=0)
    state = model.state_dict()
    extra = set(state) - set(plain.state_dict())
    assert extra and all(".adapters.default.lora_" in k for k in extra)
    result = plain.load_state_dict(state, strict=False)
    assert not result.missing_keys and set(result.unexpected_keys) == extra
    again = ml.inject(tiny_t5(seed=3), ml.LoRA(2), seed=1)
    again.load_state_dict(state)  # and back into an injected model, strictly
    ids = torch.randint(2, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        again(input_ids=ids, labels=ids).logits, model(input_ids=ids, labels=ids).logits
    )
    model.save_pretrained(tmp_path / "out")  # the injected model's save_pretrained: its adapter
    assert ml.read_adapter(tmp_path / "out").config == ml.LoRA(2)
    with pytest.raises(ValueError, match="push_to_hub"):
        model.save_pretrained(tmp_path / "hub", push_to_hub=True)


def test_the_hf_trainer_example_resumes_exactly_and_merges(tmp_path, monkeypatch):
    pytest.importorskip("accelerate")
    import runpy

    from tests.docs_pages import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "examples"))

    example = runpy.run_path(str(ROOT / "examples/hf_trainer.py"))
    result = example["main"](["--out", str(tmp_path), "--steps", "6"])
    assert result["drift"] == 0.0
    merged = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors"} <= merged


def test_the_pages_trainer_merge_and_named_adapter_section_runs(tmp_path):
    """docs/huggingface.md, section "Training with the Trainer, merging, several adapters":
    its python blocks run in order, and what they claim holds."""
    pytest.importorskip("accelerate")
    from tests.docs_pages import ROOT, run_page

    text = (ROOT / "docs/huggingface.md").read_text()
    section = text.split("\n## Training with the Trainer, merging, several adapters\n", 1)[1]
    page = tmp_path / "section.md"
    page.write_text(section.split("\n## ", 1)[0])
    (tmp_path / "work").mkdir()
    ns = run_page(page, tmp_path / "work")
    assert ml.adapter_names(ns["served"]) == ["a"]
    assert ns["out"].shape[0] == 4
    assert (tmp_path / "work/out/merged/model.safetensors").is_file()
    assert not (tmp_path / "work/out/run/checkpoint-2/model.safetensors").exists()


def test_trainer_reloads_the_best_adapter_checkpoint_at_the_end(tmp_path):
    """load_best_model_at_end with adapter-only checkpoints: the model ends with the adapter
    of the checkpoint the Trainer names best, read back from its directory."""
    model = ml.inject(tiny_t5(), ml.MoV(4), seed=0)
    trainer = _trainer(
        model,
        tmp_path,
        max_steps=6,
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=True,  # "best" = the highest loss: an early checkpoint, not the last
        learning_rate=0.5,  # large steps, so the checkpoints' adapters differ
        eval_dataset=Pairs(4),
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-6"), best  # not the last one
    saved = ml.read_adapter(best).arrays
    current = {k: v for k, v in _adapter(model).items()}
    assert saved and all(
        torch.equal(current[_state_key(name)], torch.from_numpy(array))
        for name, array in saved.items()
    )


def _state_key(canonical: str) -> str:
    """``<path>.<param>`` (file) -> ``<path>.adapters.default.<param>`` (state_dict)."""
    path, _, param = canonical.rpartition(".")
    return f"{path}.adapters.default.{param}"
