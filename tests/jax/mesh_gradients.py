"""Raw adapter gradients and plain SGD steps of the NNX T5 on one device and on a (data=4,
model=2) mesh of 8 host CPU devices, for MoV and MoLoRA.

Run by ``test_distributed.py`` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``:
``python tests/jax/mesh_gradients.py CHECKPOINT OUT``. For each kind it writes the perturbed
adapter to ``OUT/<kind>`` (so torch can compute the same gradients independently) and
``OUT/<kind>.npz`` with ``grad/<where>/<name>`` and ``sgd/<where>/<name>`` arrays, ``where``
in ``one``, ``mesh``. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import mixlight as ml
import mixlight.extend as mlx
from mixlight_jax import AdapterParam, t5

KINDS = {"mov": lambda: ml.MoV(4), "molora": lambda: ml.MoLoRA(4, rank=2)}
RULES = [("expert", "model"), ("embed", None), ("mlp", None), ("rank", None)]
STEPS, LR = 3, 0.1


def batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(input_ids [8, 7], decoder_input_ids [8, 5], labels [8, 5])``; the decoder input is
    the labels shifted right after the start token 0 (as HF does)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 100, (8, 7)).astype(np.int32)
    labels = rng.integers(2, 100, (8, 5)).astype(np.int32)
    dec = np.concatenate([np.zeros((8, 1), np.int32), labels[:, :-1]], 1)
    return ids, dec, labels


def build(checkpoint: str, kind: str, adapter: Path):
    """The T5 with the kind's adapter, moved off its start and saved to ``adapter`` (first
    call) or loaded from it."""
    model = t5.from_pretrained(checkpoint)
    if adapter.exists():
        return ml.load_adapter(model, adapter)
    ml.inject(model, KINDS[kind](), seed=0)
    backend = mlx.load_backend("jax")
    rng = np.random.default_rng(1)
    arrays = backend.adapter_state(model)[2]
    backend.load_adapter_state(
        model, {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in arrays.items()}
    )
    ml.save_adapter(model, adapter)
    return model


@nnx.jit
def gradients(model, ids, dec, labels):
    def loss_fn(model):
        logits = model(input_ids=ids, decoder_input_ids=dec)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return nnx.grad(loss_fn, argnums=nnx.DiffState(0, AdapterParam))(model)


def named(model, state) -> dict[str, np.ndarray]:
    """An adapter-shaped state (gradients) by canonical parameter name."""
    holder = nnx.clone(model)
    nnx.update(holder, state)
    return mlx.load_backend("jax").adapter_state(holder)[2]


def place(model, mesh: Mesh, data: NamedSharding, arrays):
    """Base replicated, adapters split on their expert axis over ``model``, batch on ``data``."""
    with nnx.logical_axis_rules(RULES):
        adapter = nnx.get_named_sharding(nnx.state(model, AdapterParam), mesh)
    nnx.update(model, jax.device_put(nnx.state(model, AdapterParam), adapter))
    base = nnx.state(model, nnx.Not(AdapterParam))
    nnx.update(model, jax.device_put(base, NamedSharding(mesh, P())))
    return [jax.device_put(a, data) for a in arrays]


def run(checkpoint: str, kind: str, out: Path, mesh: Mesh | None) -> dict[str, np.ndarray]:
    model = build(checkpoint, kind, out / kind)
    arrays = list(batch())
    if mesh is not None:
        arrays = place(model, mesh, NamedSharding(mesh, P("data")), arrays)
    where = "one" if mesh is None else "mesh"
    result = {f"grad/{where}/{k}": v for k, v in named(model, gradients(model, *arrays)).items()}
    for _ in range(STEPS):
        grads = gradients(model, *arrays)
        params = nnx.state(model, AdapterParam)
        nnx.update(model, jax.tree.map(lambda p, g: p - LR * g, params, grads))
    arrays_after = mlx.load_backend("jax").adapter_state(model)[2]
    result |= {f"sgd/{where}/{k}": v for k, v in arrays_after.items()}
    return result


def main() -> None:
    checkpoint, out = sys.argv[1], Path(sys.argv[2])
    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    for kind in KINDS:
        result = run(checkpoint, kind, out, None) | run(checkpoint, kind, out, mesh)
        np.savez(out / f"{kind}.npz", **result)


if __name__ == "__main__":
    main()
