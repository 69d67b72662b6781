"""Train a MoV adapter on the NNX T5 over a (data, model) device mesh, then save it once.

The batch is split over the ``data`` axis; the frozen base's kernels are split over the
``model`` axis; adapters are split along their ``expert`` axis (logical axis rules). One jitted
step serves one device and the mesh alike: only the placement of the arrays changes.

On a laptop (8 simulated CPU devices):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/distributed_jax.py
On a TPU/GPU host, unchanged but for flags:
    python examples/distributed_jax.py --checkpoint path/to/hf-t5 --data 4 --model 2
``--check`` also runs the same steps on one device and prints the largest differences.

This is the step to copy into a training script of your own. ``mixlight tune run.toml
--backend jax`` runs the whole pipeline on the same kind of mesh (``mesh = {data = 4,
model = 2}`` in the config), across hosts too (``jax.distributed``; docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import mixlight as ml
import mixlight.extend as mlx
from mixlight_jax import AdapterParam, t5

# Adapter logical axes -> mesh axes: experts spread over "model", the rest replicated.
LOGICAL_RULES = [("expert", "model"), ("embed", None), ("mlp", None), ("rank", None)]
TINY = dict(
    vocab_size=128,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)


def build(checkpoint: str | None, experts: int, spread: float = 0.0):
    """The T5 (a checkpoint, or a tiny random one), MoV injected, and its optimizer.

    ``spread`` moves the experts apart from their all-ones start. ``--check`` needs it: with
    identical experts the router's gradient is exactly zero up to rounding, and Adam turns
    that rounding noise into full-size steps, so two summation orders would part ways.
    """
    if checkpoint:
        model = t5.from_pretrained(checkpoint)
    else:
        model = t5.T5ForConditionalGeneration(t5.T5Config(**TINY), rngs=nnx.Rngs(0))
    ml.inject(model, ml.MoV(experts), seed=0)
    if spread:
        backend = mlx.load_backend("jax")
        rng = np.random.default_rng(1)
        arrays = backend.adapter_state(model)[2]
        backend.load_adapter_state(
            model, {k: v + spread * rng.standard_normal(v.shape) for k, v in arrays.items()}
        )
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=AdapterParam)


@nnx.jit
def train_step(model, optimizer, ids, labels):
    def loss_fn(model):
        logits = model(input_ids=ids, decoder_input_ids=t5.shift_right(labels, model.config))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, AdapterParam))(model)
    optimizer.update(model, grads)
    return loss


def _base_sharding(mesh: Mesh, value: jax.Array) -> NamedSharding:
    """Split a base kernel's output axis over ``model`` when it divides, else replicate."""
    size = mesh.shape["model"]
    if value.ndim == 2 and value.shape[1] % size == 0:
        return NamedSharding(mesh, P(None, "model"))
    return NamedSharding(mesh, P())


def shard(model, optimizer, mesh: Mesh) -> None:
    """Place base, adapter and optimizer state on ``mesh`` (in place)."""
    with nnx.logical_axis_rules(LOGICAL_RULES):
        adapter = nnx.get_named_sharding(nnx.state(model, AdapterParam), mesh)
    nnx.update(model, jax.device_put(nnx.state(model, AdapterParam), adapter))
    base = nnx.state(model, nnx.Not(AdapterParam))
    nnx.update(model, jax.tree.map(lambda v: jax.device_put(v, _base_sharding(mesh, v)), base))
    nnx.update(optimizer, jax.device_put(nnx.state(optimizer), NamedSharding(mesh, P())))


def batches(steps: int, batch: int, vocab: int):
    rng = np.random.default_rng(0)
    for _ in range(steps):
        ids = rng.integers(2, vocab, (batch, 12)).astype(np.int32)
        yield ids, np.flip(ids, 1).copy()


def train(args, mesh: Mesh | None):
    model, optimizer = build(args.checkpoint, args.experts, 0.1 if args.check else 0.0)
    data = None
    if mesh is not None:
        shard(model, optimizer, mesh)
        data = NamedSharding(mesh, P("data"))
    losses = []
    for ids, labels in batches(args.steps, args.batch, model.config.vocab_size):
        if data is not None:
            if args.batch % mesh.shape["data"]:
                raise ValueError(
                    f"--batch {args.batch} is not divisible by the data axis "
                    f"({mesh.shape['data']} devices)"
                )
            ids, labels = jax.device_put(ids, data), jax.device_put(labels, data)
        losses.append(float(train_step(model, optimizer, ids, labels)))
    return model, losses


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="HF T5 checkpoint directory (default: tiny random)")
    parser.add_argument("--data", type=int, default=4, help="devices on the data axis")
    parser.add_argument("--model", type=int, default=2, help="devices on the model axis")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default="runs/distributed_jax")
    parser.add_argument("--check", action="store_true", help="compare with one device")
    args = parser.parse_args(argv)
    devices = jax.devices()
    if args.data * args.model != len(devices):
        raise SystemExit(f"--data {args.data} x --model {args.model} != {len(devices)} devices")
    mesh = Mesh(np.array(devices).reshape(args.data, args.model), ("data", "model"))
    model, losses = train(args, mesh)
    ml.save_adapter(model, args.out)  # gathers the shards to the host, writes atomically
    attention = model.encoder.block[0].layer[0].SelfAttention
    report = {
        "losses": losses,
        "devices": len(devices),
        "adapter": args.out,
        "base_kernel_spec": str(attention.q.kernel.sharding.spec),
        "adapter_vectors_spec": str(attention.k.adapter["vectors"].sharding.spec),
    }
    if args.check:
        single, single_losses = train(args, None)
        ours = mlx.load_backend("jax").adapter_state(model)[2]
        theirs = mlx.load_backend("jax").adapter_state(single)[2]
        fresh, _ = build(args.checkpoint, args.experts)  # a fresh adapter, then the file
        ml.load_adapter(fresh, args.out)
        ids, labels = next(batches(1, args.batch, model.config.vocab_size))
        report |= {
            "param_diff": max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours),
            "loss_diff": max(abs(a - b) for a, b in zip(losses, single_losses, strict=True)),
            "reload_logit_diff": float(
                np.abs(
                    np.asarray(fresh(input_ids=ids, decoder_input_ids=labels))
                    - np.asarray(model(input_ids=ids, decoder_input_ids=labels))
                ).max()
            ),
        }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
