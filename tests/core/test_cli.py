import numpy as np

import mixlight as ml
import mixlight.extend as mlx
from mixlight.cli import main


def test_info_lists_backends_and_kinds(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "vectors" in out and "low_rank" in out


def test_inspect_prints_sites(tmp_path, capsys):
    cfg = ml.MoV(3, targets=["a"])
    specs = mlx.plan_sites(cfg, {"a": mlx.ModuleShape(4, 4)})
    arrays = {
        s.canonical_name(n): a
        for s in specs
        for n, a in s.init_params(np.random.default_rng(0)).items()
    }
    mlx.write_adapter(tmp_path, cfg, specs, arrays)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MoV-3" in out and "format 1.0" in out and "params=24" in out


def test_inspect_missing_dir_is_a_clean_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
