"""PEFT adapters in the JAX T5: an (IA)³ or LoRA adapter that PEFT trained on a torch T5 is
imported into ``mixlight_jax.t5`` loaded from the same checkpoint (one-expert and upcycled)
and gives PEFT's torch logits; a JAX adapter exported to PEFT's format loads in torch PEFT
with the JAX logits. The conversion is the core's numpy code: no backend code for PEFT."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any transformers import
pytest.importorskip("jax")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import mixlight as ml  # noqa: E402
import mixlight.extend as mlx  # noqa: E402
from mixlight_jax import t5  # noqa: E402

VARIANTS = {"v1.1": "gated-gelu", "v1.0": "relu"}
DIMS = dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, vocab_size=128)
IDS = np.random.default_rng(0).integers(2, 128, (2, 7))
MASK = np.ones_like(IDS)
MASK[0, -2:] = 0
DEC = np.random.default_rng(1).integers(2, 128, (2, 5))
ATOL = 1e-4  # torch and XLA float32 kernels (the files' own torch <-> JAX tolerance)


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
    """(directory of a tiny HF T5 written by save_pretrained, a loader of fresh torch copies)."""
    config = transformers.T5Config(
        **DIMS,
        decoder_start_token_id=0,
        feed_forward_proj=VARIANTS[request.param],
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp(request.param.replace(".", ""))
    transformers.T5ForConditionalGeneration(config).save_pretrained(directory)
    return directory, lambda: transformers.T5ForConditionalGeneration.from_pretrained(
        directory
    ).eval()


def torch_logits(model):
    ids, mask, dec = (torch.from_numpy(np.asarray(a, np.int64)) for a in (IDS, MASK, DEC))
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.numpy()


def jax_logits(model):
    return np.asarray(model(jnp.asarray(IDS), jnp.asarray(MASK), jnp.asarray(DEC)))


def trained_peft(torch_model, config, out):
    """A PEFT adapter with random non-identity values, saved to ``out``; its logits."""
    model = peft.get_peft_model(torch_model, config).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ia3_l" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    return torch_logits(model)


def peft_configs():
    return {
        "ia3": peft.IA3Config(target_modules=["k", "v", "wo"], feedforward_modules=["wo"]),
        "lora": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v", "wo"]),
    }


@pytest.mark.parametrize("kind", ["ia3", "lora"])
def test_a_peft_adapter_runs_in_the_jax_t5_with_pefts_logits(checkpoint, kind, tmp_path):
    directory, fresh_torch = checkpoint
    want = trained_peft(fresh_torch(), peft_configs()[kind], tmp_path / "peft")
    base = t5.from_pretrained(directory)
    model = ml.load_peft_adapter(nnx.clone(base), tmp_path / "peft")
    got = jax_logits(model)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert np.abs(got - jax_logits(base)).max() > 1e-3  # the adapter matters
    upcycle = ml.MoV(3) if kind == "ia3" else ml.MoLoRA(3, rank=4, alpha=16)
    mixture = ml.load_peft_adapter(nnx.clone(base), tmp_path / "peft", upcycle=upcycle, seed=0)
    np.testing.assert_allclose(jax_logits(mixture), want, atol=ATOL, rtol=0)


def test_a_jax_adapter_exports_to_torch_peft(checkpoint, tmp_path):
    directory, fresh_torch = checkpoint
    model = ml.inject(t5.from_pretrained(directory), ml.IA3(), seed=0)
    backend = mlx.load_backend("jax")
    _, _, arrays = backend.adapter_state(model)
    rng = np.random.default_rng(4)
    backend.load_adapter_state(
        model, {n: a + rng.normal(0, 0.3, a.shape).astype(np.float32) for n, a in arrays.items()}
    )
    ml.save_peft_adapter(model, tmp_path / "peft")
    loaded = peft.PeftModel.from_pretrained(fresh_torch(), tmp_path / "peft").eval()
    np.testing.assert_allclose(torch_logits(loaded), jax_logits(model), atol=ATOL, rtol=0)
