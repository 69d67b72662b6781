"""``examples/sft_trl.py``: MoV on a decoder-only model under TRL's ``SFTTrainer`` learns the
completions, with the loss on the completion only and the router's load-balancing loss in
the loss the trainer optimises; its saved adapter reloads into a fresh model unchanged."""

import pathlib
import runpy

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

import mixlight as ml  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "sft_trl.py"


@pytest.fixture(scope="module")
def example():
    return runpy.run_path(str(EXAMPLE))


@pytest.fixture(scope="module")
def trained(example, tmp_path_factory):
    args = example["parse_args"](["--out", str(tmp_path_factory.mktemp("sft")), "--steps", "30"])
    return example["train"](args)


def test_sft_trainer_lowers_the_completion_loss(trained):
    trainer, _ = trained
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1


def test_only_the_completion_is_in_the_loss(trained, example):
    trainer, _ = trained
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    labelled = batch["labels"][0] != -100
    prompt_length = len(
        example["char_tokenizer"]()(example["next_letter_data"]()[0]["prompt"])["input_ids"]
    )
    assert not labelled[:prompt_length].any() and labelled[prompt_length:].any()


def test_the_router_loss_is_in_the_trainers_loss(trained):
    trainer, model = trained
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        aux = float(ml.aux_losses(model))
        logits = out.logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)
    assert aux > 0
    np.testing.assert_allclose(float(out.loss), float(ce) + aux, rtol=1e-5)


def test_the_saved_adapter_reloads_unchanged(trained, example, tmp_path):
    _, model = trained
    saved = ml.save_adapter(model, tmp_path / "adapter")
    fresh = example["tiny_llama"](len(example["char_tokenizer"]()))
    ml.load_adapter(fresh, saved)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        np.testing.assert_allclose(
            fresh.eval()(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-5
        )
