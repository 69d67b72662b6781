"""The JAX backend on NNX modules beyond ``nnx.Linear`` (issue #25): ``nnx.LinearGeneral``
(``nnx.MultiHeadAttention``'s query/key/value/out), ``nnx.Einsum``, layers stacked by
``nnx.vmap`` and run by ``nnx.scan``, explicit activation widths, input sites, and the
refusals that name a module's path, type and kernel shape."""

from __future__ import annotations

import re

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import mixlight as ml  # noqa: E402
import mixlight.extend as mlx  # noqa: E402
from mixlight_jax import AdapterParam, adapter_layers, sequence_masks  # noqa: E402
from mixlight_jax.model import adapter_arrays, set_adapter_arrays  # noqa: E402

JAX = mlx.load_backend("jax")
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((2, 5, 16)), jnp.float32)


def _np(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _set(model, arrays: dict[str, np.ndarray]) -> None:
    set_adapter_arrays(model, arrays)


def _random_arrays(model, scale=0.3, seed=1, positive=False) -> dict[str, np.ndarray]:
    """The model's adapter, every entry moved off its initial value."""
    rng = np.random.default_rng(seed)
    arrays = adapter_arrays(model)
    return {
        n: (
            np.exp(scale * rng.standard_normal(a.shape))
            if positive and n.endswith("vectors")
            else a + scale * rng.standard_normal(a.shape)
        ).astype(np.float32)
        for n, a in arrays.items()
    }


# --- nnx.MultiHeadAttention -----------------------------------------------------------------


class Attention(nnx.Module):
    def __init__(self, seed: int = 0, kv_heads: int = 2):
        self.attn = nnx.MultiHeadAttention(
            num_heads=4,
            in_features=16,
            qkv_features=16,
            num_kv_heads=kv_heads,
            decode=False,
            rngs=nnx.Rngs(seed),
        )

    def __call__(self, x):
        return self.attn(x)


def _scaled_kv(scale_k: np.ndarray, scale_v: np.ndarray) -> Attention:
    """A fresh attention whose key/value kernels and biases are scaled per output column
    (``scale [kv_heads * head_dim]``, head-major): what an (IA)³ vector does to the output."""
    model = Attention()
    for module, scale in ((model.attn.key, scale_k), (model.attn.value, scale_v)):
        shaped = scale.reshape(module.kernel.shape[1:])  # [kv_heads, head_dim]
        module.kernel.set_value(module.kernel[...] * shaped)
        module.bias.set_value(module.bias[...] * shaped)
    return model


KV = r"attn\.(?:key|value)"


def test_ia3_on_multi_head_attention_equals_scaled_kernels():
    model = ml.inject(Attention(), ml.IA3(targets=[KV]))
    specs = JAX.adapter_state(model)[1]
    # GQA: the key/value kernels are [16, 2, 8]; the canonical flat width is 2 * 8
    assert {(s.path, s.d_in, s.d_out) for s in specs} == {
        ("attn.key", 16, 16 // 4 * 2),
        ("attn.value", 16, 16 // 4 * 2),
    }
    arrays = _random_arrays(model, positive=True)
    _set(model, arrays)
    want = _scaled_kv(arrays["attn.key.vectors"][0], arrays["attn.value.vectors"][0])(X)
    np.testing.assert_allclose(_np(nnx.jit(lambda m, x: m(x))(model, X)), _np(want), atol=1e-5)


def test_routed_mov_on_multi_head_attention_routes_per_kv_head():
    """``heads="auto"`` reads the key/value kernels' own head axis (2 under GQA, not the 4
    query heads); with zero routers every head routes uniformly, so the adapted attention
    is the one whose kernels are scaled by the mean vector."""
    config = ml.AdapterConfig([ml.Site(KV, mlx.Vectors(), heads="auto")], num_experts=3)
    model = ml.inject(Attention(), config)
    spec = JAX.adapter_state(model)[1][0]
    assert spec.heads == 2 and spec.d_route == 16 // 4  # head_dim
    arrays = {
        n: np.zeros_like(a) if n.endswith("router") else a
        for n, a in _random_arrays(model, positive=True).items()
    }
    _set(model, arrays)
    got = model(X)
    want = _scaled_kv(arrays["attn.key.vectors"].mean(0), arrays["attn.value.vectors"].mean(0))(X)
    np.testing.assert_allclose(_np(got), _np(want), atol=1e-5)
    probs = adapter_layers(model)["attn.key"].last_probs.get_value()
    assert probs.shape == (2, 5, 2, 3)  # [batch, seq, kv heads, experts]
    np.testing.assert_allclose(_np(probs), 1 / 3, atol=1e-6)


def test_molora_on_linear_general_equals_the_reference_on_flat_tensors():
    """MoLoRA on the query (``[16] -> [4, 4]``) and out (``[4, 4] -> [16]``, contracting two
    axes): each equals the core's numpy reference on the flattened input and output."""
    model = Attention()
    config = ml.MoLoRA(3, rank=2, targets=[r"attn\.(?:query|out)"], router=ml.TopK(2))
    ml.inject(model, config, seed=2)
    _set(model, _random_arrays(model))
    arrays = adapter_arrays(model)
    specs = {s.path: s for s in JAX.adapter_state(model)[1]}
    assert (specs["attn.out"].d_in, specs["attn.out"].d_out) == (16, 16)
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for path in ("attn.query", "attn.out"):
        layer = adapter_layers(model)[path]
        x = RNG.standard_normal((2, 5, *layer.shapes[0])).astype(np.float32)
        h = _np(layer.base(jnp.asarray(x)))
        got = _np(layer(jnp.asarray(x)))
        spec = specs[path]
        params = {n.rsplit(".", 1)[1]: a for n, a in arrays.items() if n.startswith(path + ".")}
        want = mlx.apply_site(
            spec, params, x.reshape(2, 5, spec.d_in), h.reshape(2, 5, spec.d_out)
        ).out.reshape(h.shape)
        np.testing.assert_allclose(got, want, atol=1e-5)
        seen[path] = (x, got)
    assert not np.allclose(seen["attn.out"][1], _np(adapter_layers(model)["attn.out"].base(
        jnp.asarray(seen["attn.out"][0])
    )), atol=1e-3)  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [
        ml.LoRA(rank=2, targets=[r"attn\.(?:query|key|value|out)"]),
        ml.IA3(targets=[r"attn\.(?:key|value|out)"]),
    ],
    ids=["lora", "ia3"],
)
def test_one_expert_adapters_merge_into_linear_general_kernels(config):
    model = ml.inject(Attention(), config, seed=4)
    _set(model, _random_arrays(model, scale=0.2, positive=True))
    adapted = _np(model(X))
    ml.merge_and_unload(model)
    assert type(model.attn.key) is nnx.LinearGeneral
    np.testing.assert_allclose(_np(model(X)), adapted, atol=1e-5)


# --- nnx.Einsum -------------------------------------------------------------------------------


class Heads(nnx.Module):
    """A projection onto heads whose kernel is ``[heads, d, head_dim]`` (Gemma's layout), so
    its canonical ``[d, heads * head_dim]`` is a permutation away."""

    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.proj = nnx.Einsum("btd,ndh->btnh", (4, 16, 3), (4, 3), rngs=rngs)
        self.down = nnx.Einsum("...nh,nhd->...d", (4, 3, 16), rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.proj(x)))


def test_einsum_sites_equal_the_reference_and_merge():
    model = ml.inject(Heads(), ml.MoLoRA(2, rank=2, targets=[r"proj|down"]), seed=1)
    specs = {s.path: s for s in JAX.adapter_state(model)[1]}
    assert (specs["proj"].d_in, specs["proj"].d_out) == (16, 12)
    assert (specs["down"].d_in, specs["down"].d_out) == (12, 16)
    _set(model, _random_arrays(model))
    arrays = adapter_arrays(model)
    layer = adapter_layers(model)["proj"]
    h = _np(layer.base(X))
    params = {n.rsplit(".", 1)[1]: a for n, a in arrays.items() if n.startswith("proj.")}
    want = mlx.apply_site(specs["proj"], params, _np(X), h.reshape(2, 5, 12)).out
    np.testing.assert_allclose(_np(layer(X)).reshape(2, 5, 12), want, atol=1e-5)

    lora = ml.inject(Heads(), ml.LoRA(rank=2, targets=[r"proj|down"]), seed=1)
    _set(lora, _random_arrays(lora))
    adapted = _np(lora(X))
    assert np.abs(adapted - _np(Heads()(X))).max() > 1e-2
    ml.merge_and_unload(lora)
    np.testing.assert_allclose(_np(lora(X)), adapted, atol=1e-5)


def test_an_einsum_called_with_another_equation_is_refused():
    model = ml.inject(Heads(), ml.LoRA(rank=2, targets=["proj"]))
    with pytest.raises(ValueError, match=r"adapted for its equation 'btd,ndh->btnh'"):
        model.proj(X, "btd,ndh->btnh".replace("btnh", "bnth"))


# --- stacks: nnx.vmap + nnx.scan ---------------------------------------------------------------

LAYERS, D, D_FF = 3, 8, 16


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.attn = nnx.MultiHeadAttention(
            num_heads=2, in_features=D, qkv_features=D, decode=False, rngs=rngs
        )
        self.fc1 = nnx.Linear(D, D_FF, rngs=rngs)
        self.fc2 = nnx.Linear(D_FF, D, rngs=rngs)
        self.norm = nnx.LayerNorm(D, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(x)
        return self.norm(x + self.fc2(jax.nn.gelu(self.fc1(x))))


class Scanned(nnx.Module):
    """``layers``: one ``Block`` whose every parameter has a leading axis of ``LAYERS``."""

    def __init__(self, seed: int = 0):
        @nnx.split_rngs(splits=LAYERS)
        @nnx.vmap(in_axes=0, out_axes=0)
        def create(rngs: nnx.Rngs) -> Block:
            return Block(rngs)

        self.embed = nnx.Linear(4, D, rngs=nnx.Rngs(seed + 100))
        self.layers = create(nnx.Rngs(seed))

    def __call__(self, x):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def step(block: Block, x: jax.Array) -> jax.Array:
            return block(x)

        return step(self.layers, self.embed(x))


class Unrolled(nnx.Module):
    """The same layers as a list, each holding its slice of ``Scanned``'s parameters."""

    def __init__(self, scanned: Scanned):
        self.embed = nnx.clone(scanned.embed)
        state = nnx.state(scanned.layers)
        graph = nnx.graphdef(scanned.layers)
        self.layers = nnx.List(
            [nnx.merge(graph, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(LAYERS)]
        )

    def __call__(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return x


XS = jnp.asarray(RNG.standard_normal((2, 5, 4)), jnp.float32)
STACK_CONFIG = ml.AdapterConfig(
    [
        ml.Site(r"layers\.\d+\.attn\.(?:key|value)", mlx.Vectors(), heads="auto"),
        ml.Site(r"layers\.\d+\.fc1", mlx.LowRank(2)),
    ],
    num_experts=3,
    router=ml.SoftMerge(load_balance_weight=0.1, z_loss_weight=0.01),
)


def _loss(model):
    return (model(XS) ** 2).mean() + ml.aux_losses(model)


@nnx.jit
def _grads(model):
    return nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, AdapterParam))(model)


def test_a_scanned_stack_is_adapted_per_layer_like_its_unrolled_layers(tmp_path):
    scanned = Scanned()
    unrolled = Unrolled(scanned)
    np.testing.assert_allclose(_np(scanned(XS)), _np(unrolled(XS)), atol=1e-5)
    paths = [s.path for s in JAX.plan(scanned, STACK_CONFIG)]
    assert paths == [s.path for s in JAX.plan(unrolled, STACK_CONFIG)]
    assert paths[:4] == [
        "layers.0.attn.key",
        "layers.0.attn.value",
        "layers.0.fc1",
        "layers.1.attn.key",
    ]

    ml.inject(scanned, STACK_CONFIG, seed=5)
    ml.inject(unrolled, STACK_CONFIG, seed=5)
    fresh = adapter_arrays(scanned)
    assert fresh.keys() == adapter_arrays(unrolled).keys()  # one name per layer
    for name, array in adapter_arrays(unrolled).items():
        np.testing.assert_array_equal(fresh[name], array, err_msg=name)  # one seed, one adapter
    key = adapter_layers(scanned)["layers.attn.key"]
    assert key.adapter["vectors"].shape == (LAYERS, 3, D) and key.adapter["router"].shape == (
        LAYERS,
        D // 2,
        3,
    )

    moved = _random_arrays(scanned, positive=True)
    _set(scanned, moved)
    _set(unrolled, moved)
    got = _np(nnx.jit(lambda m, x: m(x))(scanned, XS))
    np.testing.assert_allclose(got, _np(unrolled(XS)), atol=1e-5)

    stats, want_stats = ml.routing_stats(scanned), ml.routing_stats(unrolled)
    assert stats.keys() == want_stats.keys() and "layers.2.fc1" in stats
    for path, s in stats.items():
        np.testing.assert_allclose(s["mean_prob"], want_stats[path]["mean_prob"], atol=1e-5)
    np.testing.assert_allclose(
        float(ml.aux_losses(scanned)), float(ml.aux_losses(unrolled)), rtol=1e-5
    )

    (loss, grads), (want_loss, want_grads) = _grads(scanned), _grads(unrolled)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    stacked = nnx.to_flat_state(grads)
    per_layer = dict(nnx.to_flat_state(want_grads))
    assert len(stacked) == 2 * 2 + 3  # router+vectors on key and value, router+A+B on fc1
    for path, grad in stacked:
        g = _np(grad.get_value())
        assert np.abs(g).max() > 0, path
        for i in range(LAYERS):
            unrolled_path = (path[0], i, *path[1:])
            np.testing.assert_allclose(
                g[i], _np(per_layer[unrolled_path].get_value()), atol=1e-6, rtol=1e-4
            )

    ml.save_adapter(scanned, tmp_path / "stack")
    saved = ml.read_adapter(tmp_path / "stack")
    assert set(saved.arrays) == set(moved)
    assert "layers.1.fc1.lora_B" in saved.arrays and "layers.fc1.lora_B" not in saved.arrays
    again = ml.load_adapter(Scanned(), tmp_path / "stack")
    np.testing.assert_array_equal(_np(again(XS)), got)
    into_unrolled = ml.load_adapter(Unrolled(Scanned()), tmp_path / "stack")
    np.testing.assert_allclose(_np(into_unrolled(XS)), got, atol=1e-5)


def test_a_stack_merges_per_layer():
    model = ml.inject(Scanned(), ml.LoRA(rank=2, targets=[r"layers\.\d+\.(?:fc1|attn\.out)"]))
    _set(model, _random_arrays(model))
    adapted = _np(model(XS))
    routed = ml.inject(Scanned(), ml.MoV(2, targets=[r"layers\.\d+\.fc2"]))
    _set(routed, _random_arrays(routed, positive=True))
    means = ml.mean_routing(routed, [{"x": XS}])
    assert sorted(means) == [f"layers.{i}.fc2" for i in range(LAYERS)]
    ml.merge_and_unload(model)
    assert type(model.layers.fc1) is nnx.Linear
    np.testing.assert_allclose(_np(model(XS)), adapted, atol=1e-5)


def test_a_stack_takes_a_site_on_every_layer_or_none():
    with pytest.raises(ValueError, match=r"adapt layers \[0, 2\] of the 3 layers .*layers\.fc1"):
        ml.inject(Scanned(), ml.LoRA(targets=[r"layers\.(?:0|2)\.fc1"]))
    model = ml.inject(Scanned(), ml.LoRA(targets=[r"layers\.\d+\.fc1"]))
    with pytest.raises(ValueError, match=r"holds 3 layers stacked by nnx.vmap, and was called"):
        model.layers.fc1(jnp.ones((2, D)))


class Linears(nnx.Module):
    """A stack that is itself an ``nnx.Linear`` (vmapped directly)."""

    def __init__(self):
        @nnx.split_rngs(splits=LAYERS)
        @nnx.vmap(in_axes=0, out_axes=0)
        def create(rngs: nnx.Rngs) -> nnx.Linear:
            return nnx.Linear(D, D, rngs=rngs)

        self.lins = create(nnx.Rngs(0))
        self.head = nnx.Linear(D, 2, rngs=nnx.Rngs(1))

    def __call__(self, x):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def step(linear: nnx.Linear, x: jax.Array) -> jax.Array:
            return linear(x)

        return self.head(step(self.lins, x))


def test_a_stacked_linear_is_adapted_by_its_layers_paths():
    with pytest.raises(TypeError, match=r"cannot adapt lins: Linear with kernel shape \[3, 8, 8\]"):
        ml.inject(Linears(), ml.LoRA(targets=["lins"]))
    model = ml.inject(Linears(), ml.LoRA(targets=[r"lins\.\d+"]))
    assert [s.path for s in JAX.adapter_specs(model)[1]] == ["lins.0", "lins.1", "lins.2"]
    assert model(jnp.ones((2, D))).shape == (2, 2)


def test_sequence_routing_in_a_stack_pools_each_layer_with_the_mask():
    """Each scan step gets the whole ``[batch, seq]`` mask (broadcast along the layer axis
    for the scan to slice), as each unrolled layer does."""
    config = ml.MoV(3, targets=[r"layers\.\d+\.fc1"], routing="sequence")
    scanned = ml.inject(Scanned(), config)
    unrolled = ml.inject(Unrolled(Scanned()), config)
    moved = _random_arrays(scanned, positive=True)
    _set(scanned, moved)
    _set(unrolled, moved)
    mask = jnp.asarray(np.arange(5) < 3, jnp.float32)[None].repeat(2, 0)
    outputs = []
    for model in (scanned, unrolled):
        with sequence_masks(model, attention_mask=mask):
            outputs.append(_np(model(XS)))
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)
    assert np.abs(outputs[0] - _np(scanned(XS))).max() > 1e-3  # the mask matters
    assert adapter_layers(scanned)["layers.fc1"].masks.get_value() == {}


# --- activation widths and input sites ---------------------------------------------------------


class Gelu(nnx.Module):
    def __call__(self, x):
        return jax.nn.gelu(x)


class Mlp(nnx.Module):
    """An activation whose consumer is named ``proj`` (no known consumer name)."""

    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.up = nnx.Linear(16, 32, rngs=rngs)
        self.act = Gelu()
        self.proj = nnx.Linear(32, 16, rngs=rngs)

    def __call__(self, x):
        return self.proj(self.act(self.up(x)))


def test_an_activation_without_a_known_consumer_takes_an_explicit_width():
    with pytest.raises(TypeError, match=r"cannot tell the width of activation module act.*width="):
        ml.inject(Mlp(), ml.IA3(targets=["act"]))
    config = ml.AdapterConfig([ml.Site("act", mlx.Vectors(), width=32)], num_experts=2)
    assert ml.AdapterConfig.from_dict(config.to_dict()) == config
    model = ml.inject(Mlp(), config)
    assert JAX.adapter_state(model)[1][0].d_out == 32
    with pytest.raises(TypeError, match=r"gives width=8, but up has its output width 32"):
        ml.inject(Mlp(), ml.AdapterConfig([ml.Site("up", mlx.Vectors(), width=8)], 2))


def test_an_input_site_scales_the_kernel_rows():
    site = ml.Site("proj", mlx.Vectors(), tensor="input")
    model = ml.inject(Mlp(), ml.AdapterConfig([site], num_experts=1))
    assert JAX.adapter_state(model)[1][0].d_out == 32
    arrays = _random_arrays(model, positive=True)
    _set(model, arrays)
    want = Mlp()
    want.proj.kernel.set_value(want.proj.kernel[...] * arrays["proj.vectors"][0][:, None])
    x = X
    np.testing.assert_allclose(_np(model(x)), _np(want(x)), atol=1e-5)
    ml.merge_and_unload(model)
    np.testing.assert_allclose(_np(model(x)), _np(want(x)), atol=1e-5)


# --- refusals -----------------------------------------------------------------------------------


class Odd(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.batched = nnx.LinearGeneral(4, 6, batch_axis={0: 2}, rngs=rngs)
        self.middle = nnx.LinearGeneral((2, 3), 5, axis=(1, -1), rngs=rngs)
        self.conv = nnx.Conv(4, 6, (3,), rngs=rngs)
        self.per_head = nnx.Einsum("bnd,ndh->bnh", (2, 4, 3), rngs=rngs)
        self.lin = nnx.Linear(4, 4, rngs=rngs)


@pytest.mark.parametrize(
    ("path", "kind", "shape", "why"),
    [
        ("batched", "LinearGeneral", [2, 4, 6], "batch_axis"),
        ("middle", "LinearGeneral", [2, 3, 5], r"contracts axis=\(1, -1\)"),
        ("conv", "Conv", [3, 4, 6], "mixlight adapts nnx.Linear"),
        ("per_head", "Einsum", [2, 4, 3], "its own kernel"),
    ],
)
def test_unsupported_modules_are_refused_naming_path_type_and_kernel_shape(path, kind, shape, why):
    want = rf"cannot adapt {path}: {kind} with kernel shape {re.escape(str(shape))}: .*{why}"
    for config in (ml.LoRA(targets=[path]), ml.IA3(targets=[path])):
        with pytest.raises(TypeError, match=want):
            ml.inject(Odd(), config)
    ml.inject(Odd(), ml.LoRA(targets=["lin"]))  # the rest of the model is fine
