"""Plant known bugs one at a time and show which tests kill each (issue 17's mutants).

    .venv/bin/python scripts/mutants.py                 # every mutant, on a copy of HEAD
    .venv/bin/python scripts/mutants.py --only ties     # some of them (name substrings)
    .venv/bin/python scripts/mutants.py --list

The repository is never touched: HEAD is exported (``git archive``) into a temporary
directory, each mutant is a textual patch applied there and undone afterwards (also on
Ctrl-C), and the tests run there with that copy first on ``PYTHONPATH``. Before the mutants,
the killing tests must pass on the unpatched copy. Prints a table: mutant -> the tests that
failed (killed), "SURVIVED", or "BROKEN" (pytest failed without a failing test: a crash is
not a kill). Exit status 1 if any mutant is not killed or the baseline fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ORACLE_CORE = "tests/core/test_oracle.py::test_core_numpy_math_equals_loop_reference"
ORACLE_TORCH = "tests/torch/test_oracle.py"
ORACLE_JAX = "tests/jax/test_oracle.py"


@dataclass(frozen=True)
class Mutant:
    """A planted bug: ``(old, new)`` text replacements in one file (each ``old`` must occur
    exactly once) and the pytest targets expected to kill it."""

    name: str
    path: str
    edits: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]


MUTANTS = (
    Mutant(
        "softmax over the wrong axis",
        "mixlight/primitives.py",
        (("z / z.sum(axis=-1, keepdims=True)", "z / z.sum(axis=0, keepdims=True)"),),
        (ORACLE_CORE,),
    ),
    Mutant(
        "top-k renormalisation dropped",
        "mixlight/math/_routing.py",
        (("    if renormalize:\n", "    if False:\n"),),
        (ORACLE_CORE,),
    ),
    Mutant(
        "LoRA scale alpha instead of alpha/r",
        "mixlight/experts.py",
        (("return float(self.alpha) / self.rank", "return float(self.alpha)"),),
        (ORACLE_CORE,),
    ),
    Mutant(
        "torch per-head vector layout transposed",
        "backends/mixlight_torch/ops/mov.py",
        (
            (
                "per_head = vectors.view(n_experts, n_heads, -1).transpose(0, 1)  # [H, E, k]",
                "per_head = vectors.view(n_experts, -1, n_heads).permute(2, 0, 1)",
            ),
        ),
        (ORACLE_TORCH + "::test_adapter_layer_equals_loop_reference",),
    ),
    Mutant(
        "router float32 cast dropped",
        "mixlight/math/_routing.py",
        (
            ("    r = p.to_float32(route_in)\n    if heads:", "    r = route_in\n    if heads:"),
            ('einsum(r, p.to_float32(weight), "... k', 'einsum(r, p.cast_like(weight, r), "... k'),
        ),
        (ORACLE_TORCH + "::test_adapter_layer_equals_loop_reference", ORACLE_JAX),
    ),
    Mutant(
        "wrong top-k router gradient (torch)",
        "backends/mixlight_torch/ops/_routing.py",
        (("g_l = probs * g_probs - full_softmax * dot", "g_l = probs * (g_probs - dot)"),),
        (ORACLE_TORCH + "::test_adapter_layer_equals_loop_reference",),
    ),
    Mutant(
        "sequence pooling shifted by one",
        "mixlight/math/_routing.py",
        (
            (
                'total = einsum(r, m, "b s d, b s -> b d")',
                'total = einsum(r[:, 1:], m[:, :-1], "b s d, b s -> b d")',
            ),
        ),
        (ORACLE_CORE,),
    ),
    Mutant(
        "wrong JAX MoLoRA cotangent",
        "backends/mixlight_jax/ops/molora.py",
        (("    return g_u * p_rep, g_p, g_b\n", "    return g_u, g_p, g_b\n"),),
        (ORACLE_JAX + "::test_jax_layer_mix_equals_loop_reference",),
    ),
    Mutant(
        "all-padding guard removed",
        "mixlight/math/_routing.py",
        (("    count = count + p.cast_like(count == 0, count)", "    count = count"),),
        (ORACLE_CORE,),
    ),
    Mutant(
        "fused MoV saves the logits",
        "backends/mixlight_torch/ops/mov.py",
        (
            (
                "ctx.save_for_backward(h, router_weight, vectors, probs)",
                "ctx.save_for_backward(h, router_weight, vectors, probs, logits)",
            ),
            (
                "h, router_weight, vectors, probs = ctx.saved_tensors",
                "h, router_weight, vectors, probs = ctx.saved_tensors[:4]",
            ),
        ),
        ("tests/torch/test_fused.py::test_mov_saves_no_merged_vector",),
    ),
    Mutant(
        "ranks sum gradients instead of averaging (FSDP2)",
        "backends/mixlight_torch/distributed.py",
        (
            (  # every block holds adapter parameters and reduce-scatters its own gradients
                "        fully_shard(model.get_submodule(path), **fsdp)\n",
                "        fully_shard(model.get_submodule(path), **fsdp)\n"
                "        model.get_submodule(path).set_gradient_divide_factor(1.0)\n"
                "        model.get_submodule(path).set_force_sum_reduction_for_comms(True)\n",
            ),  # (a plain SUM: gloo has no PREMUL_SUM)
        ),
        (
            "tests/torch/test_distributed.py::test_sharded_gradients_equal_single_process",
            "tests/torch/test_distributed.py::test_sharded_training_equals_single_process",
        ),
    ),
    Mutant(
        "JAX MoV vector gradient x8",
        "backends/mixlight_jax/ops/mov.py",
        (("g_v.astype(vectors.dtype)\n", "(8 * g_v).astype(vectors.dtype)\n"),),
        (
            ORACLE_JAX + "::test_jax_layer_mix_equals_loop_reference",
            "tests/jax/test_distributed.py::test_mesh_gradients_equal_one_device_and_torch",
        ),
    ),
    Mutant(
        "sequence routing under a cache (refusal removed)",
        "mixlight/_cache_safety.py",
        (("    if unsafe:\n", "    if False:\n"),),
        (
            "tests/torch/test_decoding.py::"
            "test_sequence_routing_on_decoder_sites_is_refused_with_a_cache_or_correct",
            "tests/jax/test_decoding.py::"
            "test_sequence_routing_on_decoder_sites_is_refused_with_a_cache_or_correct",
        ),
    ),
    Mutant(
        "torch top-k ties by torch.topk",
        "backends/mixlight_torch/primitives.py",
        (
            (
                "return x.sort(dim=-1, descending=True, stable=True).indices[..., :k]",
                "return x.topk(k, dim=-1).indices",
            ),
        ),
        (ORACLE_TORCH + "::test_adapter_layer_equals_loop_reference",),
    ),
    Mutant(
        "generate's encoder pools over stale masks",
        "backends/mixlight_torch/model.py",
        (('    get_encoder = getattr(model, "get_encoder", None)', "    return None"),),
        ("tests/torch/test_decoding.py::test_cached_uncached_and_teacher_forced_logits_agree",),
    ),
)


def export_head(dest: Path) -> None:
    """The committed tree at HEAD, written under ``dest`` (no git metadata, no work tree)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def apply(copy: Path, mutant: Mutant) -> str:
    """Patch the copy; returns the original text (for :func:`restore`)."""
    target = copy / mutant.path
    original = target.read_text()
    text = original
    for old, new in mutant.edits:
        count = text.count(old)
        if count != 1:
            raise RuntimeError(f"{mutant.name}: {old!r} occurs {count} times in {mutant.path}")
        text = text.replace(old, new)
    target.write_text(text)
    return original


def restore(copy: Path, mutant: Mutant, original: str) -> None:
    (copy / mutant.path).write_text(original)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: int) -> tuple[int, list[str], str]:
    """``(return code, failed test ids, output tail)`` of pytest on ``tests`` in the copy."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PYTHONPATH"] = os.pathsep.join([str(copy), str(copy / "backends")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, ["(timed out)"], ""
    out = proc.stdout + proc.stderr
    failed = sorted(set(re.findall(r"^FAILED (\S+)", out, flags=re.M)))
    errors = sorted(set(re.findall(r"^ERROR (\S+)", out, flags=re.M)))
    return proc.returncode, failed + [f"ERROR {e}" for e in errors], out[-2000:]


def short(test_id: str) -> str:
    """``tests/x/test_y.py::test_z[param]`` -> ``x/test_y::test_z[param]``."""
    path, _, name = test_id.partition("::")
    where = f"{Path(path).parent.name}/{Path(path).stem}"
    return f"{where}::{name}" if name else where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="mutant name substrings")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path} -> {' '.join(m.tests)}")
        return 0
    copy = Path(tempfile.mkdtemp(prefix="mixlight-mutants-"))
    try:
        export_head(copy)
        if not args.skip_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, failed, tail = run_tests(copy, tests, args.timeout)
            if code != 0:
                print(f"baseline fails ({code}): {failed}\n{tail}")
                return 1
            print(f"baseline: {len(tests)} targets pass unpatched")
        rows = []
        for mutant in chosen:
            original = apply(copy, mutant)
            start = time.monotonic()
            try:
                code, failed, _ = run_tests(copy, mutant.tests, args.timeout)
            finally:
                restore(copy, mutant, original)
            killers = sorted({short(f) for f in failed if not f.startswith("ERROR")})
            # a test that errors (a crash in setup) is not a kill: it compared nothing
            if killers:
                verdict = ", ".join(killers)
            elif code != 0:
                verdict = f"BROKEN (pytest exit {code}, no failing test): {failed}"
            else:
                verdict = "SURVIVED"
            rows.append((mutant.name, verdict, time.monotonic() - start))
            print(f"  {mutant.name}: {verdict} ({rows[-1][2]:.0f} s)", flush=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'mutant':<{width}} | killed by |\n|{'-' * (width + 2)}|-----------|")
    for name, verdict, _ in rows:
        print(f"| {name:<{width}} | {verdict} |")
    return 1 if any(v.startswith(("SURVIVED", "BROKEN")) for _, v, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
