"""Named adapters in the JAX backend (issue #13), on a tiny NNX T5: several adapters per
model, one active; switching, deleting, training only the active one, and saving and
loading by name, also from a file the torch backend saved under a name."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any transformers import
jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import mixlight as ml  # noqa: E402
import mixlight.extend as mlx  # noqa: E402
from mixlight_jax import (  # noqa: E402
    AdapterLayer,
    AdapterParam,
    adapter_layers,
    sequence_masks,
    trainable,
)
from mixlight_jax.t5 import T5Config, T5ForConditionalGeneration  # noqa: E402

TINY = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
TINY |= dict(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
IDS = np.random.default_rng(0).integers(2, 100, (2, 7))
MASK = np.ones_like(IDS)
MASK[0, -2:] = 0
DEC = np.random.default_rng(1).integers(2, 100, (2, 5))
MOV = ml.MoV(4)
LORA = ml.LoRA(rank=2, targets=[r".*SelfAttention\.(q|v)"])


def tiny_t5(feed_forward_proj: str = "relu", seed: int = 0) -> T5ForConditionalGeneration:
    """A random tiny NNX T5 (v1.0 layout by default: ``wi``, ``act``, ``wo``)."""
    config = T5Config(**TINY, feed_forward_proj=feed_forward_proj)
    return T5ForConditionalGeneration(config, rngs=nnx.Rngs(seed))


@nnx.jit
def _forward(model, ids, mask, dec):
    return model(ids, mask, dec)


def logits(model) -> np.ndarray:
    return np.asarray(_forward(model, *map(jnp.asarray, (IDS, MASK, DEC))))


def perturb(model, scale: float = 0.3, seed: int = 1):
    """Move every adapter variable, active or not, off its initial value."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, AdapterParam)
    nnx.update(model, jax.tree.map(lambda a: a + scale * rng.standard_normal(a.shape), state))
    return model


def values(model, kind) -> dict:
    return {k: np.array(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, kind))}


def two_adapters():
    """A T5 with MoV ``default`` (active) and LoRA ``b``, both perturbed, and its base."""
    base = tiny_t5()
    model = ml.inject(nnx.clone(base), MOV, seed=1)
    ml.inject(model, LORA, seed=2, adapter_name="b")
    return perturb(model), base


def test_a_second_name_is_added_inactive_and_switching_switches(tmp_path):
    model, base = two_adapters()
    assert ml.adapter_names(model) == ["default", "b"]
    mov = logits(model)
    with ml.disable_adapters(model):
        np.testing.assert_array_equal(logits(model), logits(base))
    assert all(layer.enabled for layer in adapter_layers(model).values())

    ml.save_adapter(model, tmp_path / "mov")  # the active one
    only_mov = ml.load_adapter(nnx.clone(base), tmp_path / "mov")
    np.testing.assert_allclose(logits(only_mov), mov, atol=1e-6)

    ml.set_adapter(model, "b")
    assert ml.adapter_names(model) == ["b", "default"]
    lora = logits(model)
    assert np.abs(lora - mov).max() > 1e-3 and np.abs(lora - logits(base)).max() > 1e-3
    ml.save_adapter(model, tmp_path / "lora_active")
    ml.save_adapter(model, tmp_path / "mov_by_name", adapter_name="default")
    assert ml.read_adapter(tmp_path / "lora_active").config == LORA
    # q is adapted by b only, k by default only, v by both
    attention = model.encoder.block[0].layer[0].SelfAttention
    assert attention.q.spec.path.endswith(".q") and attention.k.spec is None
    assert attention.v.names() == ["default", "b"] and attention.v.active == "b"
    assert set(ml.routing_stats(model)) == set()  # LoRA routes nothing

    ml.set_adapter(model, "default")
    np.testing.assert_array_equal(logits(model), mov)
    assert set(ml.routing_stats(model)) == {s.path for s in ml.read_adapter(tmp_path / "mov").specs}
    mov_by_name = ml.load_adapter(nnx.clone(base), tmp_path / "mov_by_name")
    np.testing.assert_allclose(logits(mov_by_name), mov, atol=1e-6)
    # the base identity a file records is that of the modules its adapter adapts
    ml.set_adapter(model, "b")
    backend = mlx.load_backend("jax")
    by_name, alone = backend.base_identity(model, "default"), backend.base_identity(only_mov)
    np.testing.assert_array_equal(by_name.samples, alone.samples)
    assert not np.array_equal(backend.base_identity(model).samples, alone.samples)


def test_only_the_active_adapter_trains():
    model, _ = two_adapters()
    count = ml.trainable_parameters(model)
    active = sum(v.size for v in values(model, trainable(model)).values())
    every = sum(v.size for v in values(model, AdapterParam).values())
    assert count.trainable == active and every > active and count.total > every
    assert (
        values(model, trainable(model)).keys() == values(model, trainable(model, "default")).keys()
    )

    for name in ("default", "b"):
        ml.set_adapter(model, name)
        optimizer = nnx.Optimizer(model, optax.adamw(1e-2, weight_decay=0.5), wrt=trainable(model))
        other = nnx.Not(trainable(model))
        before = values(model, trainable(model)), values(model, nnx.All(AdapterParam, other))
        _step(model, optimizer)
        after = values(model, trainable(model)), values(model, nnx.All(AdapterParam, other))
        assert before[1] and all(not np.array_equal(v, after[0][k]) for k, v in before[0].items())
        assert all(np.array_equal(v, after[1][k]) for k, v in before[1].items())


def test_switching_adapters_keeps_each_adapters_optimizer():
    """Every adapter's parameters stay ``AdapterParam`` at their own path: an optimizer built
    for one adapter keeps training that adapter after ``set_adapter`` switches back and forth
    (it never moves the other adapter), with no optimizer rebuilt."""
    model, _ = two_adapters()
    optimizers = {
        name: nnx.Optimizer(model, optax.adam(1e-2), wrt=trainable(model, name))
        for name in ("default", "b")
    }
    for name in ("default", "b", "default", "b"):
        ml.set_adapter(model, name)
        before = values(model, AdapterParam)
        _step(model, optimizers[name])
        after = values(model, AdapterParam)
        for key, value in before.items():
            assert np.array_equal(value, after[key]) == (key[-2] != name), key
    assert {int(o.step[...]) for o in optimizers.values()} == {2}


@nnx.jit
def _step(model, optimizer):
    def loss(model):
        out = model(*map(jnp.asarray, (IDS, MASK, DEC)))
        return (out**2).mean() + ml.aux_losses(model)

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, optimizer.wrt))(model)
    optimizer.update(model, grads)


def test_delete_adapter():
    model, base = two_adapters()
    lora = ml.inject(nnx.clone(base), LORA, seed=2)
    ml.set_adapter(model, "b")
    backend = mlx.load_backend("jax")
    backend.load_adapter_state(lora, backend.adapter_state(model)[2])
    ml.delete_adapter(model, "default")  # inactive: b keeps running
    assert ml.adapter_names(model) == ["b"]
    np.testing.assert_array_equal(logits(model), logits(lora))
    attention = model.encoder.block[0].layer[0].SelfAttention
    assert type(attention.k) is nnx.Linear and isinstance(attention.v, AdapterLayer)
    assert values(model, AdapterParam).keys() == values(model, trainable(model)).keys()

    ml.inject(model, MOV, adapter_name="c")
    ml.delete_adapter(model, "b")  # the active one: the first remaining one takes over
    assert ml.adapter_names(model) == ["c"] and type(attention.q) is nnx.Linear
    np.testing.assert_allclose(logits(model), logits(base), atol=1e-5)  # fresh MoV: identity
    ml.delete_adapter(model, "c")  # the last one: the plain model
    assert not mlx.load_backend("jax").is_injected(model)
    assert type(attention.v) is nnx.Linear
    np.testing.assert_array_equal(logits(model), logits(base))
    again, _ = two_adapters()
    assert ml.remove_adapters(again) is again and not mlx.load_backend("jax").is_injected(again)
    np.testing.assert_array_equal(logits(again), logits(base))


def test_load_adapter_by_name_and_errors(tmp_path):
    model, base = two_adapters()
    ml.save_adapter(model, tmp_path / "b", adapter_name="b")
    expected = logits(_activated(model, "b"))
    loaded = ml.inject(nnx.clone(base), MOV, seed=5)
    ml.load_adapter(loaded, tmp_path / "b", adapter_name="task")  # a new name: added inactive
    assert ml.adapter_names(loaded) == ["default", "task"]
    ml.set_adapter(loaded, "task")
    np.testing.assert_array_equal(logits(loaded), expected)
    ml.set_adapter(model, "default")
    ml.load_adapter(model, tmp_path / "b", adapter_name="b")  # an existing name: overwritten
    ml.set_adapter(model, "b")
    np.testing.assert_array_equal(logits(model), expected)

    with pytest.raises(ValueError, match="already carries a mixlight adapter named 'b'"):
        ml.inject(model, LORA, adapter_name="b")
    with pytest.raises(ValueError, match="must be a Python identifier"):
        ml.inject(model, LORA, adapter_name="not a name")
    with pytest.raises(KeyError, match=r"no adapter named 'x'; its adapters: \['b', 'default'\]"):
        ml.set_adapter(model, "x")
    with pytest.raises(ValueError, match="already carries a different adapter"):
        ml.load_adapter(model, tmp_path / "b", adapter_name="default")


def _activated(model, name):
    ml.set_adapter(model, name)
    return model


def test_sequence_routed_adapter_beside_a_token_routed_one_under_jit(tmp_path):
    base = tiny_t5()
    model = ml.inject(nnx.clone(base), ml.MoV(4, routing="sequence"), adapter_name="seq")
    ml.inject(model, MOV, adapter_name="tok")
    perturb(model)
    for name in ("seq", "tok"):
        ml.save_adapter(model, tmp_path / name, adapter_name=name)
    ids, mask, dec = map(jnp.asarray, (IDS, MASK, DEC))

    @nnx.jit
    def masked(model):
        with sequence_masks(model, attention_mask=mask):
            return model(ids, mask, dec)

    for name in ("seq", "tok"):
        ml.set_adapter(model, name)
        alone = ml.load_adapter(nnx.clone(base), tmp_path / name)
        np.testing.assert_allclose(masked(model), masked(alone), atol=1e-6)
        assert float(ml.aux_losses(model)) == pytest.approx(float(ml.aux_losses(alone)))


# --- from torch ---------------------------------------------------------------------------


def test_a_file_torch_saved_under_a_name_loads_into_jax_under_a_name(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from mixlight_jax import t5
    from mixlight_torch.model import adapter_parameters

    config = transformers.T5Config(
        **TINY, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0
    )
    torch.manual_seed(0)
    torch_model = transformers.T5ForConditionalGeneration(config).eval()
    torch_model.save_pretrained(tmp_path / "base")
    jax_model = t5.from_pretrained(str(tmp_path / "base"))

    ml.inject(torch_model, MOV, seed=1)
    ml.inject(torch_model, ml.MoLoRA(3, rank=2), seed=2, adapter_name="task")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in adapter_parameters(torch_model, "task"):
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    ml.save_adapter(torch_model, tmp_path / "task", adapter_name="task")
    ml.set_adapter(torch_model, "task")
    with torch.no_grad():
        ids, mask, dec = map(torch.tensor, (IDS, MASK, DEC))
        want = torch_model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits

    ml.inject(jax_model, MOV, seed=1)
    ml.load_adapter(jax_model, tmp_path / "task", adapter_name="other")
    ml.set_adapter(jax_model, "other")
    np.testing.assert_allclose(logits(jax_model), want.numpy(), atol=1e-4, rtol=0)
