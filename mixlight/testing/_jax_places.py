"""The JAX places of :func:`mixlight.testing.check_on_devices`: each local device, a ``data``
mesh and a ``data x model`` mesh of all devices.

At each, a case's site is injected (:func:`mixlight.inject`) into a tiny NNX module whose
adapted ``proj`` returns the case's frozen output ``h``, so the adapter layer runs as in a
model, with the fast op it resolves (:mod:`mixlight.fast_ops`, ``mixlight_jax.conformance``). The
forward and ``jax.vjp`` run eagerly or under ``jax.jit``; on a mesh, under ``jax.set_mesh``
(ops that shard by hand see it), with the batch split over ``data`` and the adapter's
parameters split by logical axis rules over ``model``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import attrs
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import mixlight as ml
from mixlight.testing._devices import Outcome, Place, PlaceError, config_for, same_site

_partition = cast(Callable[..., PartitionSpec], PartitionSpec)  # (its __init__ is untyped)

DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("expert", "model"),
    ("embed", None),
    ("mlp", None),
    ("rank", None),
)
"""Adapter logical axes -> mesh axes on the ``data x model`` mesh (experts over ``model``,
as ``examples/distributed_jax.py``); a dimension the mesh axis does not divide stays whole."""

MATMUL = {"cpu": "float32", "gpu": "tensorfloat32", "cuda": "tensorfloat32", "tpu": "bfloat16"}
"""The precision JAX gives float32 products by default, by platform."""

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class _GivenOutput(nnx.Linear):
    """A linear layer whose output is given: ``(x, h) -> h`` (its kernel only sizes it)."""

    def __call__(self, x: jax.Array, h: jax.Array) -> jax.Array:  # type: ignore[override]
        return h


def _zeros(key: Any, shape: Sequence[int], dtype: Any = jnp.float32) -> np.ndarray:
    """A kernel of zeros, made on the host (an initialiser run by JAX compiles per shape)."""
    return np.zeros(shape, dtype)


class _Tiny(nnx.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        self.proj = _GivenOutput(d_in, d_out, use_bias=False, kernel_init=_zeros, rngs=nnx.Rngs(0))

    def __call__(self, x: jax.Array, h: jax.Array) -> jax.Array:
        return self.proj(x, h)


def _put(a: Any, sharding: Any) -> jax.Array:
    a = np.asarray(a) if not isinstance(a, jax.Array) else a
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


@attrs.frozen
class _Layout:
    """How a place puts arrays: ``batch`` for batch-major arrays, ``param(axes)`` for an
    adapter parameter with its logical axes, ``whole`` for everything else."""

    batch: Any
    whole: Any
    param: Callable[[tuple[str, ...], tuple[int, ...]], Any]
    mesh: Mesh | None
    expected: str


def _injected(case: Any, layout: _Layout) -> _Tiny:
    """The tiny module with the case's site injected and its parameters, placed."""
    from mixlight_jax import AdapterLayer, AdapterParam

    model = _Tiny(case.spec.d_in, case.spec.d_out)
    ml.inject(model, config_for(case.spec), seed=0)
    layer = model.proj
    assert isinstance(layer, AdapterLayer)
    if not same_site(layer.spec, case.spec):
        raise PlaceError(f"inject gave the site {layer.spec}, not the case's {case.spec}")
    specs = layer.spec.param_specs()
    for name, variable in layer.adapter.items():
        value = np.asarray(case.params[name], np.float32)
        variable.set_value(_put(value, layout.param(specs[name].axes, value.shape)))
    frozen = nnx.state(model, nnx.Not(AdapterParam))
    nnx.update(model, jax.tree.map(lambda v: _put(v, layout.whole), frozen))
    return model


def _layout(a: jax.Array) -> str:
    """The devices holding ``a`` and how many rows of its batch each holds."""
    devices = ",".join(sorted(str(d) for d in a.sharding.device_set))
    rows = a.sharding.shard_shape(a.shape)[0] if a.ndim else 1
    return f"{devices} rows/{a.shape[0] // max(rows, 1)}" if a.ndim else devices


def _array(a: Any) -> np.ndarray:
    """A (possibly sharded over several hosts) JAX array as float64 numpy."""
    if not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        a = multihost_utils.process_allgather(a, tiled=True)
    return np.asarray(a).astype(np.float64)


def _to_numpy(a: Any) -> np.ndarray | None:
    return None if a is None else _array(a)


def _both(
    graphdef: Any,
    sequence: bool,
    params: Any,
    rest: Any,
    x: Any,
    h: Any,
    mask: Any,
    g: Any,
) -> Any:
    """The injected module's output and routing and, with a cotangent ``g``, the vjp of its
    adapter parameters, ``x`` and ``h``. The fast op the layer resolved is static metadata of
    ``graphdef``, so a site that resolves another op is traced anew."""
    from mixlight_jax import sequence_masks

    def forward(params: Any, x: Any, h: Any) -> Any:
        m = nnx.merge(graphdef, params, rest, copy=True)
        if sequence:
            with sequence_masks(m, attention_mask=mask):
                out = m(x, h)
        else:
            out = m(x, h)
        return out, (m.proj.last_probs.get_value(), m.proj.last_logits.get_value())

    if g is None:
        out, routed = forward(params, x, h)
        return out, routed, None
    out, pull, routed = jax.vjp(forward, params, x, h, has_aux=True)
    return out, routed, pull(g)


_jitted = jax.jit(_both, static_argnums=(0, 1))


def _run_at(layout: _Layout) -> Callable[[Any, np.ndarray | None, str], Outcome]:
    from mixlight_jax.conformance import op_label

    def run(case: Any, g_out: np.ndarray | None, mode: str) -> Outcome:
        from mixlight_jax import AdapterLayer, AdapterParam

        if mode not in ("eager", "jit"):
            raise PlaceError(f"mode {mode!r}: JAX places run 'eager' or 'jit'")
        model = _injected(case, layout)
        assert isinstance(model.proj, AdapterLayer)
        label = op_label(model.proj)  # what the layer resolved when the adapter was added
        graphdef, params, rest = nnx.split(model, AdapterParam, ...)  # type: ignore[misc]
        dtype = DTYPES[case.dtype]
        x = _put(np.asarray(case.x, dtype), layout.batch)
        h = _put(np.asarray(case.h, dtype), layout.batch)
        mask = _put(np.asarray(case.mask, np.float32), layout.batch)
        g = None if g_out is None else _put(np.asarray(g_out, dtype), layout.batch)
        args = (graphdef, case.spec.routing == "sequence")
        fn = _jitted if mode == "jit" else _both
        with jax.set_mesh(layout.mesh) if layout.mesh is not None else contextlib.nullcontext():
            out, (probs, logits), pulled = fn(*args, params, rest, x, h, mask, g)
        grads = None
        if pulled is not None:
            g_params, g_x, g_h = pulled
            holder = nnx.merge(graphdef, g_params, rest, copy=True)
            pairs = [(n, v.get_value()) for n, v in holder.proj.adapter.items()]
            grads = {n: _array(v) for n, v in [*pairs, ("x", g_x), ("h", g_h)]}
        return Outcome(
            label,
            _array(out),
            _to_numpy(probs),
            _to_numpy(logits),
            grads,
            layout=_layout(out),
            expected=layout.expected,
            dtype=str(out.dtype),
        )

    return run


def _device_place(device: Any, modes: tuple[str, ...]) -> Place:
    one = jax.sharding.SingleDeviceSharding(device)
    layout = _Layout(one, one, lambda axes, shape: one, None, f"{device} rows/1")
    return Place(f"jax:{device}", _run_at(layout), modes, 1, MATMUL.get(device.platform, "float32"))


def _mesh_place(
    devices: Sequence[Any],
    data: int,
    model: int,
    rules: Sequence[tuple[str, str | None]],
    modes: tuple[str, ...],
) -> Place:
    shape = (data, model) if model > 1 else (data,)
    names = ("data", "model") if model > 1 else ("data",)
    mesh = Mesh(np.array(devices).reshape(shape), names)
    table = dict(rules)

    def param(axes: tuple[str, ...], dims: tuple[int, ...]) -> Any:
        spec = []
        for axis, size in zip(axes, dims, strict=False):
            target = table.get(axis)
            fits = target is not None and target in names and size % mesh.shape[target] == 0
            spec.append(target if fits else None)
        return NamedSharding(mesh, _partition(*spec))

    everywhere = ",".join(sorted(str(d) for d in devices))
    layout = _Layout(
        NamedSharding(mesh, _partition("data")),
        NamedSharding(mesh, _partition()),
        param,
        mesh,
        f"{everywhere} rows/{data}",
    )
    label = f"data={data},model={model}" if model > 1 else f"data={data}"
    platform = devices[0].platform
    return Place(
        f"jax:mesh({label})", _run_at(layout), modes, data, MATMUL.get(platform, "float32")
    )


def jax_places(
    modes: Sequence[str] | None = None, rules: Sequence[tuple[str, str | None]] | None = None
) -> list[Place]:
    """See :func:`mixlight.testing.device_places`."""
    places = []
    seen: set[str] = set()
    for device in jax.local_devices():
        first = device.platform not in seen
        seen.add(device.platform)
        own = tuple(modes) if modes is not None else (("eager", "jit") if first else ("jit",))
        places.append(_device_place(device, own))
    devices = jax.devices()
    n = len(devices)
    if n > 1:
        rules = tuple(rules) if rules is not None else DEFAULT_RULES
        on_mesh = tuple(modes) if modes is not None else ("jit",)
        places.append(_mesh_place(devices, n, 1, rules, on_mesh))
        if n % 2 == 0:
            places.append(_mesh_place(devices, n // 2, 2, rules, on_mesh))
    return places
