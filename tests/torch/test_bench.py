"""The benchmark suite on tiny shapes: every compared implementation computes the same
numbers (outputs and gradients), and the results writer produces its sections. No speed
assertions: speed and memory live in ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import benchmarks as bench  # noqa: E402
import benchmarks.analysis  # noqa: E402, F401
import benchmarks.cases  # noqa: E402, F401
from benchmarks.cli import main  # noqa: E402
from benchmarks.impl import check_same  # noqa: E402
from benchmarks.sites import molora_group  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared CPU, OpenMP workers that spin-wait make tiny ops slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("number", sorted(bench.cases.CASES))
def test_case_implementations_agree(number: int) -> None:
    for module in bench.cases.CASES[number].needs:
        pytest.importorskip(module)
    groups, shapes = bench.cases.CASES[number].build(True, CPU)
    assert shapes
    assert sum(check_same(g) for g in groups) >= len(groups)


def test_lora_baseline_matches_uniformly_routed_molora() -> None:
    group = molora_group(32, 16, 4, 4, CPU, router_std=0.0)
    assert ("fused", "lora", ("out", "x")) in group.same
    check_same(group)


def _site_of(name: str) -> str:
    """The adapted module's path from a PEFT (IA)³ or mixlight parameter name; PEFT scales
    the input of ``wo``, mixlight the output of ``act`` that feeds it (the same product)."""
    path = name.removeprefix("base_model.model.")
    path = path.removesuffix(".ia3_l.default").removesuffix(".adapters.default.vectors")
    return path.replace("DenseReluDense.wo", "DenseReluDense.act")


def test_peft_and_mixlight_ia3_have_the_same_gradients() -> None:
    """Elementwise, matched by site: a permutation, a sign error or a swapped site fails."""
    (group, _compiled), _ = bench.cases.CASES[3].build(True, CPU)
    grads = {}
    for name in ("peft-ia3", "mixlight-ia3"):
        result = group.impls[name].step()
        grads[name] = {_site_of(k): g.flatten() for k, g in result.items() if k != "out"}
    peft, ours = grads["peft-ia3"], grads["mixlight-ia3"]
    assert peft.keys() == ours.keys() and len(peft) == 16
    for site, want in peft.items():
        assert want.abs().max() > 0, site
        torch.testing.assert_close(ours[site], want, rtol=1e-4, atol=1e-6, msg=site)


def test_writer_produces_every_section(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    out = tmp_path / "results"
    argv = ["--quick", "--cases", "1,4", "--repeats", "1", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    text = (out / "RESULTS.md").read_text()
    for section in (
        "# mixlight benchmarks",
        "Command: `mixlight bench --quick --cases 1,4 --repeats 1 --threads 1",
        "Machine:",
        "Libraries:",
        "## Targets",
        "## Case 1: MoV site",
        "## Case 4: Cached greedy generation",
        "E=10: fused time <= 1.3x ia3",
        "## Notes",
    ):
        assert section in text
    record = json.loads((out / "results.json").read_text())
    assert [c["case"] for c in record["cases"]] == [1, 4]
    assert {"torch", "transformers", "peft"} <= set(record["environment"]["versions"])
    for case in record["cases"]:
        for target in case["targets"]:
            assert target["met"] in (True, False) and target["ratio"] > 0
    (out / "RESULTS.md").unlink()
    assert main(["--render", "--out", str(out)]) == 0
    assert (out / "RESULTS.md").read_text() == text


def test_bad_arguments_are_reported() -> None:
    assert main(["--quick", "--cases", "99", "--out", "unused"]) == 2
    with pytest.raises(SystemExit):
        main(["--cases", "one"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_script_without_cuda_exits_cleanly() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_bandwidth_report_refuses_without_cuda(tmp_path, capsys) -> None:
    pytest.importorskip("triton")
    from benchmarks import bandwidth

    assert bandwidth.main(["--out", str(tmp_path / "bw.json")]) == 1
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "bw.json").exists()
