"""One ``mixlight tune`` config trained with ``backend = "torch"`` and with ``backend =
"jax"``: each adapter, run in its own framework on the same base, gives the same logits
(within 1e-4) after the same steps on the same data. Plain SGD: Adam-style optimisers turn
rounding-level gradient differences into lr-sized steps (docs/tune.md)."""

import numpy as np
import pytest

import mixlight as ml
from mixlight_tune.tune_cli import demo_config, load_data, run
from mixlight_tune.tune_config import read_config
from tests.tune_case import write_case

pytest.importorskip("jax")
pytest.importorskip("optax")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _inputs(cfg, encode) -> dict[str, np.ndarray]:
    """The training rows as model inputs ``[rows, len]``, right-padded with 0; the decoder
    reads the targets after the start token 0."""
    from mixlight_tune.frameworks.jax_steps import pad_to

    train, _ = load_data(cfg)
    inputs = [encode(e.inputs) for e in train]
    targets = [[0, *encode(e.targets)[:-1]] for e in train]
    ids, mask = pad_to(inputs, max(map(len, inputs)), 0)
    dec, _ = pad_to(targets, max(map(len, targets)), 0)
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}


def _torch_logits(model, inputs) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v).long() for k, v in inputs.items()}).logits.numpy()


@pytest.mark.parametrize("preset", ["mov", "molora"])
def test_trained_adapters_give_the_same_logits_in_both_backends(tmp_path, preset):
    from mixlight_tune.frameworks.torch_steps import prepare

    adapter = {"preset": preset, "num_experts": 3} | ({"rank": 2} if preset == "molora" else {})
    case = {"optimizer": "sgd", "lr": 0.1 if preset == "mov" else 0.02, "steps": 5}
    configs = {
        b: read_config(write_case(tmp_path, b, eval_data=None, adapter=adapter, **case))
        for b in ("torch", "jax")
    }
    metrics = {b: run(cfg, lambda _: None) for b, cfg in configs.items()}
    np.testing.assert_allclose(metrics["torch"]["losses"], metrics["jax"]["losses"], rtol=1e-5)
    base = prepare(demo_config(configs["torch"]))
    inputs = _inputs(configs["torch"], base.codec.encode)
    torch_model = ml.load_model(base.path, backend="torch")
    jax_model = ml.load_model(base.path, backend="jax")
    ml.load_adapter(torch_model, tmp_path / "out-torch/adapter")
    ml.load_adapter(jax_model, tmp_path / "out-jax/adapter")
    torch_logits = _torch_logits(torch_model, inputs)
    jax_logits = np.asarray(jax_model(**inputs))
    assert np.abs(torch_logits - _torch_logits(base.model, inputs)).max() > 1.0  # it trained
    np.testing.assert_allclose(jax_logits, torch_logits, atol=1e-4, rtol=0)
