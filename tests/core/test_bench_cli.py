"""``mixlight bench`` outside a source checkout (an installed wheel has no ``benchmarks/``)
exits 2 saying it needs one, before importing torch; ``python -m benchmarks`` is the same
command from the repository root. The benchmark code is not in the core package."""

import os
import pathlib
import subprocess
import sys

from mixlight.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_no_source_checkout_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--render", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "mixlight bench needs a source checkout" in err
    assert "python -m benchmarks" in err


def test_the_core_package_holds_no_benchmark_code():
    core = ROOT / "mixlight"
    assert not any("benchmarks" in p.read_text() for p in core.rglob("*.py") if p.name != "cli.py")


def test_python_m_benchmarks_runs_from_the_root():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--cases" in out.stdout
