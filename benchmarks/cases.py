"""The benchmark cases: shapes (full and ``--quick``), targets, and the runner.

A case builds :class:`~benchmarks.impl.Group`s of implementations; :func:`run_case` times
each group in interleaved rounds, counts the bytes saved for backward (and the CUDA peak),
checks the targets and, for every missed time target, profiles where the implementation
spends more time than the one it is compared with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import mixlight.extend
from benchmarks import measure
from benchmarks.analysis import analysis_for
from benchmarks.impl import Group, Impl
from benchmarks.sites import compiled, molora_group, mov_group
from benchmarks.t5 import COMPILED_METHODS, T5Shape, generation_group, training_group

MOV_EXPERTS = (1, 10, 30, 60)
MOLORA_EXPERTS = (4, 10, 16)
JAX_MOV_EXPERTS = (1, 10, 60)
RANK = 4


@dataclass(frozen=True)
class Target:
    """``metric(impl) / metric(versus) <= bound`` in group ``group``; metric ``"time"`` (the
    median of per-round time ratios) or ``"saved"`` (bytes saved for backward)."""

    group: str
    impl: str
    versus: str
    metric: str
    bound: float

    def describe(self) -> str:
        what = "time" if self.metric == "time" else "saved activations"
        return f"{self.group}: {self.impl} {what} <= {self.bound:.3g}x {self.versus}"


@dataclass(frozen=True)
class Case:
    """A numbered case: ``build(quick, device) -> (groups, shapes text)``."""

    number: int
    title: str
    build: Callable[[bool, torch.device], tuple[list[Group], str]]
    targets: tuple[Target, ...]
    repeats: int
    needs: tuple[str, ...] = ()  # importable modules besides torch


def _site_shape(quick: bool) -> tuple[int, int]:
    return (64, 32) if quick else (8192, 1024)


def _build_mov(quick: bool, device: torch.device) -> tuple[list[Group], str]:
    tokens, d = _site_shape(quick)
    groups = [mov_group(tokens, d, e, device) for e in MOV_EXPERTS]
    return groups, f"h [{tokens}, {d}] float32, router [{d}, E], vectors [E, {d}], no heads"


def _build_mov_compiled(quick: bool, device: torch.device) -> tuple[list[Group], str]:
    tokens, d = _site_shape(quick)
    backend = "aot_eager" if quick else "inductor"
    mixlight.extend.load_backend("torch")  # the core math's primitive lookup is then traceable
    group = compiled(mov_group(tokens, d, 10, device), backend)
    return (
        [group],
        f"case 1 at E=10 (h [{tokens}, {d}]), each implementation under "
        f"torch.compile(fullgraph=True, backend={backend!r})",
    )


def _build_molora(quick: bool, device: torch.device) -> tuple[list[Group], str]:
    tokens, d = _site_shape(quick)
    groups = [molora_group(tokens, d, e, RANK, device) for e in MOLORA_EXPERTS]
    return groups, (
        f"x [{tokens}, {d}] float32, d_in = d_out = {d}, r = {RANK}, router [{d}, E]; the "
        "adapter delta only (no frozen base Linear)"
    )


def _build_jax_sites(quick: bool, device: torch.device) -> tuple[list[Group], str]:
    try:
        from benchmarks import jax_sites
    except ImportError as err:
        msg = f"case 6 needs jax and mixlight_jax ({err}); pip install mixlight[jax]"
        raise ImportError(msg) from err
    tokens, d = _site_shape(quick)
    groups = [jax_sites.mov_group(tokens, d, e) for e in JAX_MOV_EXPERTS]
    groups += [g for e in MOLORA_EXPERTS for g in jax_sites.molora_groups(tokens, d, e, RANK)]
    return groups, (
        f"cases 1 and 2 in JAX on its CPU device ({tokens} tokens, d = {d}, float32, r = {RANK}), "
        "each step one jax.jit-compiled forward + backward (jax.vjp)"
    )


def _build_jax_t5(quick: bool, device: torch.device) -> tuple[list[Group], str]:
    try:
        from benchmarks import jax_t5
    except ImportError as err:
        msg = f"case 8 needs jax, flax and mixlight_jax ({err}); pip install mixlight[jax]"
        raise ImportError(msg) from err
    shape = _t5_shape(quick)
    return [jax_t5.training_group(shape)], (
        f"{shape.describe()}; random weights, dropout 0; JAX on its CPU device, each step one "
        "jax.jit-compiled value_and_grad of the loss w.r.t. the adapter parameters; "
        "naive-mov-10: MoV-10 with the backend's fast ops off (core math, plain autodiff)"
    )


def _build_tune(quick: bool, device: torch.device) -> tuple[list[Group], str]:
    from benchmarks.tune_steps import tune_groups

    return tune_groups(quick, device)


def _build_xlora(quick: bool, device: torch.device) -> tuple[list[Group], str]:
    from benchmarks.xlora import LlamaShape, xlora_group

    shape = LlamaShape(32, 64, 2, 4, 100, 2, 16) if quick else LlamaShape.small()
    return [xlora_group(shape, device)], shape.describe()


def _t5_shape(quick: bool, batch: int = 4) -> T5Shape:
    """t5-v1_1-small at batch 4 (batch 8 takes ~10 s a step on 2 shared cores), or tiny."""
    if quick:
        return T5Shape(32, 8, 4, 64, 2, 100, 2, 16, 8)
    return T5Shape.small(batch=batch)


def _build_training(quick: bool, device: torch.device) -> tuple[list[Group], str]:
    """The eager step, and on CPU the compiled one too (on CUDA, compiling three T5 steps
    would not fit `benchmarks/gpu.sh`'s budget, and the Triton kernel is the eager path)."""
    shape = _t5_shape(quick)
    text = f"{shape.describe()}; random weights, dropout 0"
    if device.type != "cpu":
        return [training_group(shape, device)], text
    backend = "aot_eager" if quick else "inductor"
    compiled_group = compiled(training_group(shape, device, COMPILED_METHODS), backend, False)
    return [training_group(shape, device), compiled_group], (
        f"{text}. Compiled: the same step under torch.compile(backend={backend!r}), the "
        "first (untimed) round compiling"
    )


def _build_generation(quick: bool, device: torch.device) -> tuple[list[Group], str]:
    shape, new_tokens = _t5_shape(quick, batch=1), 8 if quick else 64
    text = f"{shape.describe()} (source only); {new_tokens} new tokens, greedy, KV cache"
    return [generation_group(shape, new_tokens, device)], text


CASES = {
    1: Case(
        1,
        "MoV site, forward + backward",
        _build_mov,
        (
            Target("E=10", "fused", "ia3", "time", 1.3),
            Target("E=10", "fused", "ia3", "saved", 1.05),
        ),
        repeats=10,
    ),
    2: Case(
        2,
        "MoLoRA site, forward + backward",
        _build_molora,
        (
            *(Target(f"E={e}", "fused", "lora", "time", 1.1) for e in MOLORA_EXPERTS),
            Target("E=16", "fused", "loop", "time", 1 / 3),
            *(Target(f"E={e}", "fused", "loop", "saved", 0.2) for e in MOLORA_EXPERTS),
        ),
        repeats=5,
    ),
    3: Case(
        3,
        "T5 training step (forward + backward)",
        _build_training,
        (
            Target("train step", "mov-10", "peft-ia3", "time", 1.05),
            Target("train step", "molora-10-r4", "peft-lora-r40", "time", 1.05),
            Target("train step", "mov-10", "hooks-mov-10", "time", 1.0),
            Target("train step", "molora-10-r4", "hooks-molora-10-r4", "time", 1.0),
            Target("train step", "mov-10", "peft-ia3", "saved", 1.05),
            Target("train step", "molora-10-r4", "peft-lora-r40", "saved", 1.05),
            Target("train step compiled", "mov-10", "peft-ia3", "time", 1.05),
            Target("train step compiled", "mov-10", "hooks-mov-10", "time", 1.0),
            Target("train step compiled", "mov-10", "peft-ia3", "saved", 1.05),
        ),
        repeats=7,
    ),
    4: Case(
        4,
        "Cached greedy generation",
        _build_generation,
        (Target("generate", "mov-10", "base", "time", 1.10),),
        repeats=5,
    ),
    5: Case(
        5,
        "MoV site under torch.compile, forward + backward",
        _build_mov_compiled,
        (
            Target("E=10 compiled", "fused", "ia3", "time", 1.5),
            Target("E=10 compiled", "fused", "ia3", "saved", 1.05),
        ),
        repeats=10,
    ),
    6: Case(
        6,
        "JAX under jit: MoV and MoLoRA sites, forward + backward",
        _build_jax_sites,
        (
            Target("MoV E=10", "fused", "ia3", "time", 1.5),
            Target("MoV E=10", "fused", "ia3", "saved", 1.05),
            Target("MoLoRA E=16", "fused", "lora", "time", 1.1),
            Target("MoLoRA E=16 vs loop", "fused", "loop", "time", 1 / 3),
            Target("MoLoRA E=16 vs loop", "fused", "loop", "saved", 0.2),
        ),
        repeats=10,
        needs=("jax", "mixlight_jax"),
    ),
    7: Case(
        7,
        "MoLoRA vs PEFT X-LoRA, decoder-only training step",
        _build_xlora,
        (
            Target("train step", "molora-10-r4", "peft-xlora-10", "time", 1 / 3),
            Target("train step", "molora-10-r4", "peft-xlora-10-trainable", "time", 1 / 3),
            Target("train step", "molora-10-r4", "peft-lora-r40", "time", 1.10),
        ),
        repeats=5,
    ),
    8: Case(
        8,
        "JAX NNX T5 training step under jit",
        _build_jax_t5,
        (
            Target("train step", "mov-10", "ia3", "time", 1.05),
            Target("train step", "mov-10", "naive-mov-10", "time", 1.0),
            Target("train step", "molora-10-r4", "lora-r40", "time", 1.05),
            Target("train step", "mov-10", "ia3", "saved", 1.05),
        ),
        repeats=5,
        needs=("jax", "flax", "mixlight_jax"),
    ),
    9: Case(
        9,
        "mixlight tune optimiser steps: MoV-10 and LoRA r=4 vs (IA)3, torch and JAX",
        _build_tune,
        (
            Target("torch tune step", "mov-10", "ia3", "time", 1.5),
            Target("jax tune step", "mov-10", "ia3", "time", 1.5),
        ),
        repeats=10,
        needs=("transformers", "sentencepiece"),
    ),
}


def _ratio(t: Target, results: dict[str, dict], times: dict[str, list[float]]) -> float | None:
    """The measured value of ``t``'s ratio (None when a side saved nothing)."""
    if t.metric == "saved":
        a, b = results[t.impl]["saved_bytes"], results[t.versus]["saved_bytes"]
        return a / b if a and b else None
    rounds = [x / y for x, y in zip(times[t.impl], times[t.versus], strict=True)]
    return measure.median_iqr(rounds)[1]


def run_group(group: Group, repeats: int, warmup: int, device: torch.device):
    """``(per-implementation results, raw times)`` for one group."""
    steps = {name: impl.step for name, impl in group.impls.items()}
    times = measure.time_interleaved(steps, repeats, warmup, device)
    timings = measure.summarize(times, group.baseline)
    results = {}
    for name, impl in group.impls.items():
        results[name] = {
            **timings[name].as_dict(),
            "saved_bytes": impl.saved_bytes(),
            "cuda_peak_bytes": measure.cuda_peak_bytes(impl.step, device),
        }
    return results, times


def run_case(
    case: Case, quick: bool, repeats: int | None, device: torch.device, profile: bool = True
) -> dict:
    """Run every group of ``case``; a JSON-ready dict with results, targets and profiles."""
    groups, shapes = case.build(quick, device)
    n = repeats or (3 if quick else case.repeats)
    warmup = 1
    out_groups, raw = [], {}
    for group in groups:
        results, times = run_group(group, n, warmup, device)
        raw[group.label] = (group, results, times)
        out_groups.append({"label": group.label, "baseline": group.baseline, "impls": results})
    targets = []
    for t in case.targets:
        if t.group not in raw:  # a group this device does not run
            continue
        group, results, times = raw[t.group]
        ratio = _ratio(t, results, times)
        entry = {"target": t.describe(), "ratio": ratio, "bound": t.bound}
        entry["met"] = None if ratio is None else ratio <= t.bound
        impls = group.impls
        torch_impls = all(isinstance(impls[n], Impl) for n in (t.impl, t.versus))
        if profile and torch_impls and entry["met"] is False and t.metric == "time":
            entry["profile"] = measure.profile_diff(impls[t.impl].step, impls[t.versus].step)
        targets.append(entry)
    return {
        "case": case.number,
        "title": case.title,
        "shapes": shapes,
        "repeats": n,
        "warmup": warmup,
        "groups": out_groups,
        "targets": targets,
        "analysis": analysis_for(case.number, device.type, quick),
    }
