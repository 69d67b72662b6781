"""``mixlight bench`` outside a source checkout (an installed wheel has no ``benchmarks/``)
exits 2 saying it needs one, before importing torch; ``python -m benchmarks`` is the same
command from the repository root."""

import os
import pathlib
import subprocess
import sys

from mixlight import bench_cli

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_no_source_checkout_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_cli, "source_root", lambda: tmp_path)
    hidden = {str(ROOT), "", "."}
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in hidden])
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.chdir(tmp_path)
    assert bench_cli.main(["--render", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "mixlight bench needs a source checkout" in err
    assert "python -m benchmarks" in err


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
