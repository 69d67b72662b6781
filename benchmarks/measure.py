"""Measurement: interleaved timing rounds, saved-for-backward bytes, CUDA peak memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

Step = Callable[[], object]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: Mapping[str, Step], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each step, ``repeats`` rounds after ``warmup`` untimed rounds.

    Each round runs every step once, in an order rotated by one per round, so that a burst of
    load from another process lands on all implementations alike.
    """
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(device)
            start = time.perf_counter()
            steps[name]()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median_iqr(values: list[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)``; a single value gives three copies of it."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


@dataclass(frozen=True)
class Timing:
    """One implementation's time: absolute median and IQR (ms), and the median and IQR of the
    per-round ratios to the baseline measured in the same rounds."""

    median_ms: float
    iqr_ms: tuple[float, float]
    ratio: float
    ratio_iqr: tuple[float, float]

    def as_dict(self) -> dict[str, object]:
        return {
            "median_ms": self.median_ms,
            "iqr_ms": list(self.iqr_ms),
            "ratio": self.ratio,
            "ratio_iqr": list(self.ratio_iqr),
        }


def summarize(times: Mapping[str, list[float]], baseline: str) -> dict[str, Timing]:
    """Per-implementation :class:`Timing`, ratios taken round by round against ``baseline``."""
    base = times[baseline]
    out = {}
    for name, values in times.items():
        q1, med, q3 = median_iqr([v * 1e3 for v in values])
        r1, rmed, r3 = median_iqr([v / b for v, b in zip(values, base, strict=True)])
        out[name] = Timing(med, (q1, q3), rmed, (r1, r3))
    return out


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def saved_bytes(forward: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``forward()`` runs.

    Storages of ``exclude`` (parameters, frozen weights: alive anyway) are not counted, so
    the number is the activation memory the graph adds.
    """
    skip = {_storage_key(t)[0] for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr, nbytes = _storage_key(t)
        if ptr not in skip and ptr:
            seen[ptr] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = forward()
    del result
    return sum(seen.values())


def cuda_peak_bytes(step: Step, device: torch.device) -> int | None:
    """Peak allocated bytes above the starting allocation during ``step()``; None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start


def _self_times(step: Step) -> dict[str, float]:
    """Self time (ms) per operator over one ``step()`` (device time when there is any)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        step()
    events = prof.key_averages()
    use_device = any(e.self_device_time_total for e in events)
    return {
        e.key: (e.self_device_time_total if use_device else e.self_cpu_time_total) / 1e3
        for e in events
    }


def profile_diff(step: Step, versus: Step, k: int = 6) -> list[dict[str, object]]:
    """Where ``step`` spends more than ``versus`` (one profiled call each, torch.profiler):
    the ``k`` operators with the largest self-time excess, as ``{"op", "ms", "versus_ms"}``."""
    mine, theirs = _self_times(step), _self_times(versus)
    excess = sorted(mine, key=lambda op: mine[op] - theirs.get(op, 0.0), reverse=True)
    return [
        {"op": op, "ms": mine[op], "versus_ms": theirs.get(op, 0.0)}
        for op in excess[:k]
        if mine[op] > theirs.get(op, 0.0)
    ]
