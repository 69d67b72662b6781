"""JAX inputs that used to fail or be silently wrong: routed sites given 0 tokens (also under
``nnx.jit`` and with gradients), routing statistics after a disabled pass, and the base
model's identity across backends (an adapter saved from torch on the same checkpoint loads
into the JAX T5 without a warning; onto another checkpoint, with one)."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import mixlight as ml  # noqa: E402
import mixlight.extend as mlx  # noqa: E402
from mixlight_jax import AdapterParam  # noqa: E402
from tests.jax.test_reliability_catalogue import Model  # noqa: E402

ROUTED = {
    "MoV": ml.MoV(3, targets=[r".*\.(k|v)"]),
    "MoV per head": ml.AdapterConfig([ml.Site(r".*\.(k|v)", mlx.Vectors(), heads="auto")], 3),
    "MoV top-1": ml.MoV(3, targets=[r".*\.(k|v)"], router=ml.TopK(1, renormalize=False)),
    "MoLoRA": ml.MoLoRA(3, 2, targets=[r".*\.(k|v|wo)"]),
    "MoLoRA on outputs": ml.AdapterConfig(
        [ml.Site(r".*\.wi", mlx.LowRank(2), router_input="output")], 3
    ),
}


@pytest.mark.parametrize("name", list(ROUTED))
@pytest.mark.parametrize("shape", [(0, 8), (2, 0, 8)])
def test_routed_sites_accept_zero_tokens(name, shape):
    model = ml.inject(Model(0, 8), ROUTED[name], seed=0)
    model(jnp.ones((3, 8)))

    @nnx.jit
    def loss_and_grads(m, x):
        return nnx.value_and_grad(lambda m: m(x).sum(), argnums=nnx.DiffState(0, AdapterParam))(m)

    loss, grads = loss_and_grads(model, jnp.zeros(shape))
    assert float(loss) == 0.0
    assert all(not np.asarray(g).any() for g in __import__("jax").tree.leaves(grads))
    assert model(jnp.zeros(shape)).shape == shape
    assert ml.routing_stats(model) == {}
    assert float(ml.aux_losses(model)) == 0.0


def test_routing_stats_describe_the_last_pass_only():
    model = ml.inject(Model(0, 8), ROUTED["MoV"], seed=0)
    model(jnp.ones((4, 8)))
    sites = {"layers.0.k", "layers.0.v", "layers.1.k", "layers.1.v"}
    assert set(ml.routing_stats(model)) == sites
    with ml.disable_adapters(model):
        model(jnp.ones((4, 8)))
    assert ml.routing_stats(model) == {}
    model(jnp.ones((4, 8)))
    assert set(ml.routing_stats(model)) == sites


def test_torch_adapter_on_the_same_checkpoint_loads_without_warning(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from mixlight_jax import t5

    dims = dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=1, num_decoder_layers=1)
    config = transformers.T5Config(vocab_size=100, dropout_rate=0.0, **dims)
    directories = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        directory = tmp_path / f"ckpt{seed}"
        transformers.T5ForConditionalGeneration(config).save_pretrained(directory)
        directories.append(directory)
    torch_model = transformers.T5ForConditionalGeneration.from_pretrained(directories[0])
    ml.save_adapter(ml.inject(torch_model, ml.MoLoRA(2, rank=2), seed=0), tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ml.load_adapter(t5.from_pretrained(directories[0]), tmp_path / "a")
        ml.load_adapter(t5.from_pretrained(directories[0], jnp.bfloat16), tmp_path / "a")
    with pytest.warns(UserWarning, match="weights differ"):
        ml.load_adapter(t5.from_pretrained(directories[1]), tmp_path / "a")
