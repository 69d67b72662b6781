"""A data-parallel MoV train step on 8 host CPU devices equals the single-device step.

Run by ``test_backend.py`` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; prints the largest parameter and loss
differences as JSON. Not collected by pytest (no ``test_`` prefix).
"""

import json

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import mixlight as ml
from mixlight_jax import AdapterParam

LOGICAL_RULES = [("expert", None), ("embed", None), ("mlp", None), ("rank", None)]


class Act(nnx.Module):
    def __call__(self, x):
        return jax.nn.gelu(x)


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.act = Act()
        self.fc2 = nnx.Linear(16, 8, rngs=rngs)

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


def build():
    model = MLP(nnx.Rngs(0))
    config = ml.MoV(4, targets=["act"], router=ml.SoftMerge(load_balance_weight=0.01))
    ml.inject(model, config)
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=AdapterParam)


@nnx.jit
def step(model, optimizer, x, y):
    def loss_fn(model):
        return ((model(x) - y) ** 2).mean() + ml.aux_losses(model)

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, AdapterParam))(model)
    optimizer.update(model, grads)
    return loss


def adapter_arrays(model):
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, AdapterParam))}


def main():
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4, 8)).astype(np.float32)
    y = rng.standard_normal((16, 4, 8)).astype(np.float32)

    single, single_opt = build()
    single_loss = step(single, single_opt, x, y)

    model, optimizer = build()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    with nnx.logical_axis_rules(LOGICAL_RULES):  # adapter axes -> replicated
        adapter_shardings = nnx.get_named_sharding(nnx.state(model, AdapterParam), mesh)
    assert all(s.spec == P(None, None) for s in jax.tree.leaves(adapter_shardings))
    replicated = NamedSharding(mesh, P())
    nnx.update(model, jax.device_put(nnx.state(model, AdapterParam), adapter_shardings))
    nnx.update(model, jax.device_put(nnx.state(model, nnx.Not(AdapterParam)), replicated))
    nnx.update(optimizer, jax.device_put(nnx.state(optimizer), replicated))
    batch = NamedSharding(mesh, P("data"))
    loss = step(model, optimizer, jax.device_put(x, batch), jax.device_put(y, batch))

    ours, theirs = adapter_arrays(model), adapter_arrays(single)
    probs = model.act.last_probs.get_value()
    print(
        json.dumps(
            {
                "param_diff": max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours),
                "loss_diff": float(abs(loss - single_loss)),
                "moved": max(float(np.abs(theirs[k] - 1).max()) for k in theirs if "vectors" in k),
                "probs_devices": len(probs.sharding.device_set),
            }
        )
    )


if __name__ == "__main__":
    main()
