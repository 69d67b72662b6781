"""A third party's device test, written as one would outside this repository: only the public
``mixlight.testing`` API. The conformance check, forward and gradients, runs on 4 forced CPU
JAX devices and on meshes of them (in a subprocess: ``XLA_FLAGS`` must be set before JAX is
imported); a place that computes wrong gradients fails it, and one that leaves its output
elsewhere than the batch was put is refused at once.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/jax/test_third_party_devices.py
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings

from mixlight.testing import (
    PlaceError,
    check_case_at,
    check_on_devices,
    device_places,
    site_cases,
)

pytest.importorskip("jax")


def _fails(check, error=AssertionError) -> str:
    """The message of ``check()``, which must fail with ``error``."""
    try:
        check()
    except error as err:
        return str(err)
    raise AssertionError("the check passed on a broken place")


def main() -> dict:
    """Run in a process with 4 forced CPU devices; returns what it saw."""
    places = device_places("jax")
    checked = check_on_devices("jax", examples=2)
    mesh = places[-1]

    def wrong_grads(case, g, mode):
        outcome = mesh.run(case, g, mode)
        grads = {n: 1.01 * v for n, v in outcome.grads.items()}
        return dataclasses.replace(outcome, grads=grads)

    def replicated(case, g, mode):
        outcome = mesh.run(case, g, mode)
        return dataclasses.replace(outcome, expected=outcome.layout.replace("rows/2", "rows/1"))

    broken_grads = dataclasses.replace(mesh, run=wrong_grads)
    moved = dataclasses.replace(mesh, run=replicated)
    case = site_cases(dtypes=("float32",), batches=(4,), min_experts=2)

    @settings(max_examples=1, deadline=None, database=None)
    @given(case)
    def wrong(case):
        messages.append(_fails(lambda: check_case_at(case, broken_grads)))
        messages.append(_fails(lambda: check_case_at(case, moved), PlaceError))

    messages: list[str] = []
    wrong()
    return {"checked": checked, "messages": messages}


def test_gradients_on_four_forced_cpu_devices_and_a_mesh():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    places = {path.split("/")[0] for path in report["checked"]}
    assert places == {f"jax:cpu:{i}" for i in range(4)} | {
        "jax:mesh(data=4)",
        "jax:mesh(data=2,model=2)",
    }
    wrong_grads, replicated = report["messages"]
    assert "jax:mesh(data=2,model=2)/jit:" in wrong_grads and "grad:" in wrong_grads
    assert "lives on cpu:0,cpu:1,cpu:2,cpu:3 rows/2, expected" in replicated


def test_torch_devices():
    pytest.importorskip("torch")
    checked = check_on_devices("torch", examples=1, modes=("eager",))
    assert checked[0].startswith("torch:cpu/eager:")


if __name__ == "__main__":
    print(json.dumps(main()))
