"""The torch places of :func:`mixlight.testing.check_on_devices`: the CPU, every CUDA device
and, under an initialised ``torch.distributed``, a DDP group of all processes.

At each, a case's site is injected (:func:`mixlight.inject`) into a tiny module whose adapted
``proj`` returns the case's frozen output ``h``, so the adapter layer runs as in a model, with
the fast op :mod:`mixlight.fast_ops` picks (the autograd Functions; the Triton kernel on
CUDA), eagerly or under ``torch.compile`` (``fullgraph=True`` for the backend's own fast ops,
which promise it); gradients come from ``backward``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

import mixlight as ml
from mixlight.named_adapters import DEFAULT
from mixlight.testing._devices import Outcome, Place, PlaceError, config_for, same_site
from mixlight_torch.layers import AdapterLayer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _GivenOutput(nn.Linear):
    """A linear layer whose output is given: ``(x, h) -> h`` (its weight only sizes it)."""

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return h


class _Tiny(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = _GivenOutput(d_in, d_out, bias=False)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        out: torch.Tensor = self.proj(x, h)
        return out


def _matmul(device: str) -> str:
    tf32 = device.startswith("cuda") and (
        torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    )
    return "tensorfloat32" if tf32 else "float32"


@contextlib.contextmanager
def _recompiles() -> Iterator[None]:
    """Each case is a new module, hence a recompilation: lift dynamo's limit on them (past
    it dynamo would run the module eagerly, and a compiled check would check eager code)."""
    import torch._dynamo.config as config

    with config.patch(recompile_limit=1 << 20, accumulated_recompile_limit=1 << 20):
        yield


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float64).cpu().numpy()


def _grad(t: torch.Tensor) -> np.ndarray:
    """``t``'s gradient as float64 numpy (zeros where nothing flowed to it)."""
    return np.zeros(tuple(t.shape)) if t.grad is None else _numpy(t.grad)  # type: ignore[return-value]


def _run(
    case: Any,
    g_out: np.ndarray | None,
    mode: str,
    device: str,
    compile_backend: str | None,
    rows: slice | None = None,
    world: int = 1,
) -> Outcome:
    from mixlight_torch.conformance import builtin_op, op_label

    spec = case.spec
    model = _Tiny(spec.d_in, spec.d_out).to(device)
    ml.inject(model, config_for(spec), seed=0)
    layer = model.proj
    assert isinstance(layer, AdapterLayer)
    if not same_site(layer.specs[DEFAULT], spec):
        raise PlaceError(f"inject gave the site {layer.specs['default']}, not the case's {spec}")
    with torch.no_grad():
        for name, param in layer.params_of(DEFAULT).items():
            param.copy_(torch.from_numpy(np.asarray(case.params[name], np.float32)))
    take = rows if rows is not None else slice(None)
    dtype = DTYPES[case.dtype]
    grads = g_out is not None

    def tensor(a: np.ndarray, dt: torch.dtype, leaf: bool) -> torch.Tensor:
        t = torch.tensor(np.ascontiguousarray(a[take]), dtype=dt, device=device)
        return t.requires_grad_(leaf)

    x, h = tensor(case.x, dtype, grads), tensor(case.h, dtype, grads)
    mask = tensor(case.mask, torch.float32, False)
    runner: Any = model
    if world > 1 or rows is not None:
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(device).index] if device.startswith("cuda") else None
        runner = DistributedDataParallel(model, device_ids=ids)
    if mode == "compiled":
        if compile_backend is None:
            raise PlaceError("mode 'compiled' needs a compile_backend")
        # this backend's fast ops promise fullgraph; the core math and registered ops may break
        full = builtin_op(layer, DEFAULT)
        runner = torch.compile(runner, backend=compile_backend, fullgraph=full)
    elif mode != "eager":
        raise PlaceError(f"mode {mode!r}: torch places run 'eager' or 'compiled'")
    op = op_label(layer, DEFAULT, h, mode == "compiled")
    with _recompiles():
        out = runner(x, h, attention_mask=mask)
        probs, logits = layer.last_probs, layer.last_logits
        if grads:
            g = torch.as_tensor(np.asarray(g_out)[take], dtype=torch.float64, device=device)
            (out.to(torch.float64) * g).sum().backward()
    found = None
    if grads:
        found = {n: _grad(t) for n, t in (("x", x), ("h", h))}
        for name, param in layer.params_of(DEFAULT).items():
            found[name] = _grad(param) * world  # DDP averages over processes: L is a sum
    return Outcome(
        op,
        _numpy(out),  # type: ignore[arg-type]
        _numpy(probs),
        _numpy(logits),
        found,
        rows=rows,
        layout=str(out.device),
        expected=str(torch.device(device)),
        dtype=str(out.dtype).removeprefix("torch."),
    )


def _device_place(device: str, modes: tuple[str, ...], compile_backend: str | None) -> Place:
    def run(case: Any, g_out: np.ndarray | None, mode: str) -> Outcome:
        return _run(case, g_out, mode, device, compile_backend)

    return Place(f"torch:{device}", run, modes, 1, _matmul(device))


def _ddp_place(modes: tuple[str, ...], compile_backend: str | None) -> Place:
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    else:
        device = "cpu"

    def run(case: Any, g_out: np.ndarray | None, mode: str) -> Outcome:
        share = case.h.shape[0] // world
        rows = slice(rank * share, (rank + 1) * share)
        return _run(case, g_out, mode, device, compile_backend, rows, world)

    def agree(status: int) -> int:
        flag = torch.tensor([status], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    return Place(f"torch:ddp(world={world})", run, modes, world, _matmul(device), agree)


def torch_places(
    modes: Sequence[str] | None = None, compile_backend: str | None = "aot_eager"
) -> list[Place]:
    """See :func:`mixlight.testing.device_places`."""
    if modes is None:
        modes = ("eager", "compiled") if compile_backend is not None else ("eager",)
    modes = tuple(modes)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    cuda = list(range(torch.cuda.device_count()))
    if distributed and cuda:  # each process checks its own device
        cuda = [torch.cuda.current_device()]
    devices = ["cpu"] + [f"cuda:{i}" for i in cuda]
    places = [_device_place(d, modes, compile_backend) for d in devices]
    if distributed:
        places.append(_ddp_place(("eager",), compile_backend))
    return places
