"""Conformance on every local device: the core math on a framework's arrays, placed on each
device (and, in JAX, batch-sharded over a mesh of all of them), must equal the loop
reference, forward and gradient.

A *place* says how to put numpy arrays somewhere and how to get gradients there. The check
also asserts that the result lives where its inputs were put, and split over the mesh on a
mesh, so a silent fall-back to another device or to replicated arrays fails instead of
passing by accident.
Frameworks are imported only when a check runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixlight.site_spec import SiteResult, apply_site
from mixlight.testing._conformance import check_site

FRAMEWORKS = ("jax", "torch")


@dataclass(frozen=True)
class Place:
    """One device or layout. ``value_and_grads(case, g_out)`` places the case's arrays there
    and returns the site's :class:`SiteResult` and the gradients of ``sum(g_out * out)`` wrt
    ``x``, ``h`` and every parameter; ``layout(out)`` describes where an output lives, which
    must be ``expected`` (e.g. ``"cpu"``, or ``"TFRT_CPU_0,...,TFRT_CPU_3 split"``)."""

    name: str
    expected: str
    value_and_grads: Callable[[Any, np.ndarray], tuple[SiteResult, Mapping[str, np.ndarray]]]
    layout: Callable[[Any], str]
    to_numpy: Callable[[Any], np.ndarray]


def _split(case: Any) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    """The differentiable inputs by name, and whether each is batch-major."""
    arrays = {"x": case.x, "h": case.h, **case.params}
    return arrays, {n: n in ("x", "h") for n in arrays}


def _jax_layout(a: Any) -> str:
    devices = ",".join(sorted(str(d) for d in a.devices()))
    return devices if a.sharding.is_fully_replicated else f"{devices} split"


def _jax_place(name: str, expected: str, sharding_for: Callable[[bool], Any]) -> Place:
    import jax

    def value_and_grads(case: Any, g_out: np.ndarray) -> tuple[SiteResult, dict[str, Any]]:
        arrays, batched = _split(case)
        placed = {n: jax.device_put(a, sharding_for(batched[n])) for n, a in arrays.items()}
        mask = jax.device_put(case.mask, sharding_for(True))
        g = jax.device_put(g_out, sharding_for(True))

        def both(arrays: dict[str, Any], mask: Any, g: Any) -> tuple[SiteResult, Any]:
            def forward(arrays: dict[str, Any]) -> tuple[Any, SiteResult]:
                params = {n: arrays[n] for n in case.params}
                res = apply_site(case.spec, params, arrays["x"], arrays["h"], mask)
                return res.out, res

            _, pull, res = jax.vjp(forward, arrays, has_aux=True)
            return res, pull(g)[0]

        res, grads = jax.jit(both)(placed, mask, g)
        return res, {n: np.asarray(v, np.float64) for n, v in grads.items()}

    return Place(name, expected, value_and_grads, _jax_layout, lambda a: np.asarray(a, np.float64))


def jax_places() -> list[Place]:
    """Every local JAX device, then (with more than one) a 1-D ``data`` mesh of all of them
    with the batch axis split across it and the parameters replicated."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    def on(device: Any) -> Callable[[bool], Any]:
        sharding = jax.sharding.SingleDeviceSharding(device)
        return lambda _batched: sharding

    devices = jax.local_devices()
    places = [_jax_place(f"jax:{d}", str(d), on(d)) for d in devices]
    if len(devices) > 1:
        mesh = Mesh(np.array(devices), ("data",))
        split = NamedSharding(mesh, PartitionSpec("data"))
        whole = NamedSharding(mesh, PartitionSpec())
        everywhere = ",".join(sorted(str(d) for d in devices))
        places.append(
            _jax_place(
                f"jax:mesh(data={len(devices)})",
                f"{everywhere} split",
                lambda batched: split if batched else whole,
            )
        )
    return places


def _torch_place(device: str) -> Place:
    import torch

    def value_and_grads(case: Any, g_out: np.ndarray) -> tuple[SiteResult, dict[str, Any]]:
        arrays, _ = _split(case)
        leaves = {n: torch.tensor(a, device=device, requires_grad=True) for n, a in arrays.items()}
        params = {n: leaves[n] for n in case.params}
        mask = torch.as_tensor(case.mask, device=device)
        res = apply_site(case.spec, params, leaves["x"], leaves["h"], mask)
        g = torch.as_tensor(g_out, device=device, dtype=torch.float64)
        (res.out.double() * g).sum().backward()
        grads = {
            n: np.zeros(t.shape) if t.grad is None else t.grad.double().cpu().numpy()
            for n, t in leaves.items()
        }
        return res, grads

    return Place(
        f"torch:{device}",
        device,
        value_and_grads,
        lambda t: str(t.device),
        lambda t: t.detach().double().cpu().numpy(),
    )


def torch_places() -> list[Place]:
    """The CPU and every CUDA device torch sees."""
    import torch

    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [_torch_place(n) for n in names]


def device_places(framework: str) -> list[Place]:
    """The places :func:`check_on_devices` visits for ``framework`` (``"jax"`` or
    ``"torch"``)."""
    if framework == "jax":
        return jax_places()
    if framework == "torch":
        return torch_places()
    raise ValueError(f"framework {framework!r}: expected one of {', '.join(FRAMEWORKS)}")


def check_case_at(
    case: Any, place: Place, grads: bool = True, rtol: float = 1e-5, grad_tol: float = 1e-4
) -> None:
    """Assert that one :class:`SiteCase` computed at ``place`` equals the loop reference
    (output, probabilities, logits; with ``grads``, every gradient) and that the output
    lives on the place's devices."""
    from mixlight.testing._conformance import upstream

    g_out = upstream(case)
    res, got_grads = place.value_and_grads(case, g_out)
    layout = place.layout(res.out)
    assert layout == place.expected, (
        f"{place.name}: the output of {case.spec} lives on {layout}, expected {place.expected}"
    )
    check_site(
        case,
        lambda a: a,
        place.to_numpy,
        run=lambda *_: res,
        rtol=rtol,
        atol=rtol,
        grads=(lambda _, g: got_grads if np.array_equal(g, g_out) else {}) if grads else None,
        grad_tol=grad_tol,
    )


def check_on_devices(
    framework: str = "jax",
    examples: int = 10,
    cases: Any = None,
    grads: bool = True,
    rtol: float = 1e-5,
    grad_tol: float = 1e-4,
) -> list[str]:
    """Run the conformance check (forward and, with ``grads``, gradients) on every local
    device of ``framework`` and, in JAX with several devices, on a batch-sharded mesh of all
    of them. Returns the names of the places checked, e.g. ``["jax:TFRT_CPU_0", ...,
    "jax:mesh(data=4)"]``.

    Args:
      framework: ``"jax"`` (every ``jax.local_devices()``: CPU, GPU or TPU) or ``"torch"``
        (the CPU and every CUDA device).
      examples: hypothesis examples; each runs at every place.
      cases: a strategy of :class:`SiteCase` (default: float32 sites of the built-in kinds
        with batches that the mesh divides; a custom strategy must draw such batches too,
        with :func:`site_cases`' ``batches`` knob). A custom kind has no loop gradients:
        pass ``grads=False`` for it.
      rtol / grad_tol: tolerances of outputs and gradients (float32 defaults).

    To simulate several CPU devices in JAX, set
    ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX is first imported
    (e.g. in a subprocess).
    """
    from hypothesis import HealthCheck, given, settings

    from mixlight.testing._strategies import site_cases

    where = device_places(framework)
    n = len(where) - 1 if len(where) > 1 and framework == "jax" else 1  # the mesh's size
    if cases is None:
        cases = site_cases(dtypes=("float32",), batches=(n, 2 * n))

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(cases)
    def check(case: Any) -> None:
        for place in where:
            check_case_at(case, place, grads=grads, rtol=rtol, grad_tol=grad_tol)

    check()
    return [p.name for p in where]
