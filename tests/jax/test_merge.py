"""Merging in the JAX backend (issue #13): one-expert adapters fold into the NNX T5's kernels
exactly; a routed MoV folded at the uniform routing is the model whose routers route
uniformly (zero routers); the mean routing weighs only real tokens.

Perturbations are 0.1: that already moves the tiny T5's logits by ~1 (LoRA's scale is 8),
and at 0.3 float32 rounding alone reaches 1e-5."""

from __future__ import annotations

import attrs
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import mixlight as ml  # noqa: E402
import mixlight.extend as mlx  # noqa: E402
from mixlight_jax import AdapterLayer, AdapterParam, adapter_layers  # noqa: E402
from mixlight_jax.model import state_of  # noqa: E402
from tests.jax.test_named_adapters import DEC, IDS, MASK, logits, perturb, tiny_t5  # noqa: E402

JAX = mlx.load_backend("jax")
IA3_WITH_LORA_ON_WO = attrs.evolve(
    ml.IA3(), sites=ml.IA3().sites + ml.LoRA(rank=2, targets=[r".*DenseReluDense\.wo"]).sites
)
ONE_EXPERT = {
    "ia3": ml.IA3(),
    "lora": ml.LoRA(rank=2),
    "mov1": ml.MoV(1),
    "molora1": ml.MoLoRA(1, rank=2),
    "ia3+lora_wo": IA3_WITH_LORA_ON_WO,  # act's scale folds into wo after wo's own delta
}


def plain(model) -> bool:
    return not JAX.is_injected(model) and not any(
        isinstance(m, AdapterLayer) for _, m in nnx.iter_modules(model)
    )


@pytest.mark.parametrize("proj", ["relu", "gated-gelu"])
@pytest.mark.parametrize("config", list(ONE_EXPERT.values()), ids=list(ONE_EXPERT))
def test_one_expert_adapters_merge_exactly(config, proj):
    base = tiny_t5(proj)
    model = perturb(ml.inject(nnx.clone(base), config, seed=3), scale=0.1)
    unmerged = logits(model)
    assert np.abs(unmerged - logits(base)).max() > 1e-2  # the adapter matters
    merged = JAX.merge_and_unload(model, None)
    assert merged is model and plain(model)
    np.testing.assert_allclose(logits(model), unmerged, atol=1e-5, rtol=0)


def test_merge_keeps_kernel_dtype_and_bias():
    """A bfloat16 kernel stays bfloat16; an (IA)³ scale on a biased ``nnx.Linear`` scales its
    bias too: ``(x @ W + b) * s``."""

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 6, rngs=rngs)
            self.out = nnx.Linear(6, 3, param_dtype=jnp.bfloat16, rngs=rngs)

        def __call__(self, x):
            return self.out(self.fc(x))

    rngs = nnx.Rngs(0)
    model = Net(rngs)
    model.fc.bias.set_value(jax.random.normal(rngs.params(), (6,)))
    ml.inject(model, ml.IA3(targets=["fc", "out"]), seed=0)
    perturb(model)
    x = jax.random.normal(rngs.params(), (5, 4))
    unmerged = model(x)
    JAX.merge_and_unload(model, None)
    assert model.out.kernel[...].dtype == jnp.bfloat16
    np.testing.assert_allclose(model(x), unmerged, atol=2e-2)
    assert plain(model)


def _zero_routers(model) -> None:
    state = nnx.state(model, AdapterParam)
    nnx.update(
        model,
        jax.tree_util.tree_map_with_path(
            lambda path, a: jnp.zeros_like(a) if "router" in str(path) else a, state
        ),
    )


def uniform_routing(model) -> dict[str, np.ndarray]:
    """``[E]`` or ``[H, E]`` of 1/E for every routed site."""
    return {
        s.path: np.full(
            (s.heads, s.num_experts) if s.heads else (s.num_experts,), 1 / s.num_experts
        )
        for s in state_of(model).specs
        if s.has_router
    }


@pytest.mark.parametrize("config", [ml.MoV(4), ml.MoLoRA(3, rank=2)], ids=["MoV4", "MoLoRA3"])
def test_routed_adapter_merged_at_uniform_routing_equals_uniform_routers(config):
    model = perturb(ml.inject(tiny_t5(), config, seed=4), scale=0.1)
    routing = uniform_routing(model)
    assert any(v.ndim == 2 for v in routing.values()) == config.method.startswith("MoV")  # per head
    _zero_routers(model)  # softmax(0): every token routes 1/E to each expert
    uniform = logits(model)
    JAX.merge_and_unload(model, routing)
    np.testing.assert_allclose(logits(model), uniform, atol=1e-5, rtol=0)


def test_refused_merge_leaves_the_model_as_it_was():
    model = perturb(ml.inject(tiny_t5(), ml.MoV(4), seed=4))
    before = logits(model)
    with pytest.raises(ValueError, match=r"routes between 4 experts.*mean_routing"):
        JAX.merge_and_unload(model, None)
    routing = uniform_routing(model)
    routing[next(iter(routing))] = np.full(4, 0.25)  # a per-head site given [E]
    with pytest.raises(ValueError, match=r"has shape \[4\]; this site needs \[4, 4\]"):
        JAX.merge_and_unload(model, routing)
    assert JAX.is_injected(model)
    np.testing.assert_array_equal(logits(model), before)


def test_merge_folds_only_the_active_adapter():
    base = tiny_t5()
    model = ml.inject(nnx.clone(base), ml.IA3(), seed=1)
    ml.inject(model, ml.LoRA(rank=2), seed=2, adapter_name="b")
    perturb(model, scale=0.1, seed=5)
    ml.set_adapter(model, "b")
    want = logits(model)
    JAX.merge_and_unload(model, None)
    assert plain(model)
    np.testing.assert_allclose(logits(model), want, atol=1e-5, rtol=0)


PADDED = dict(input_ids=IDS, attention_mask=MASK, decoder_input_ids=DEC)
LENGTH = int(MASK[0].sum())
UNPADDED = [  # the examples of PADDED one at a time, without padding
    dict(input_ids=IDS[:1, :LENGTH], attention_mask=MASK[:1, :LENGTH], decoder_input_ids=DEC[:1]),
    dict(input_ids=IDS[1:], attention_mask=MASK[1:], decoder_input_ids=DEC[1:]),
]


@pytest.mark.parametrize("routing", ["token", "sequence"])
def test_mean_routing_weighs_only_real_tokens(routing):
    """Padding changes no real token's hidden states (attention masks it), so the padded
    batch's mean routing equals that of its two examples unpadded, run one at a time: token
    routing weighs tokens by ``attention_mask``, and sequence routing pools over real tokens
    only (``mean_routing`` gives the sites the batch's masks)."""
    model = perturb(ml.inject(tiny_t5(), ml.MoV(4, routing=routing), seed=6))
    got = JAX.mean_routing(model, [PADDED])
    want = JAX.mean_routing(model, UNPADDED)
    assert set(got) == {s.path for s in state_of(model).specs}
    for path, probs in got.items():
        np.testing.assert_allclose(probs, want[path], atol=1e-5, err_msg=path)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(got["encoder.block.0.layer.0.SelfAttention.k"], 0.25, atol=1e-4)
    layer = adapter_layers(model)["encoder.block.0.layer.1.DenseReluDense.act"]
    assert layer.masks.get_value() == {}  # the masks were given for the passes only

    _zero_routers(model)
    for probs in JAX.mean_routing(model, [PADDED]).values():
        np.testing.assert_allclose(probs, 0.25, atol=1e-6)
    JAX.merge_and_unload(model, got)
    assert plain(model)
