"""The scale trend's summary: gaps paired by seed, sizes ordered by parameters, the table."""

from __future__ import annotations

import pytest

from mixlight_tune.cli import _parser, config_from_args, main
from mixlight_tune.experiment import (
    BASE_SIZES,
    SHIPPED_BASES,
    DemoConfig,
    base_key,
    shipped_base,
)
from mixlight_tune.scaling import SizePoint, format_scaling, scaling_summary


def results(full: list[float], mov: list[float], share: float) -> dict:
    def scored(values: list[float]) -> dict:
        return {"average": {"values": values}}

    return {
        "tables": {
            "B": {
                "chance": {"average": 0.25},
                "base": {"average": 0.3},
                "methods": {"full": scored(full), "mov": scored(mov)},
            }
        },
        "methods_info": {
            "full": {"label": "Full FT", "trainable_percent": 100.0},
            "mov": {"label": "MoV-10", "trainable_percent": share},
        },
    }


def test_the_gap_is_paired_by_seed_and_sizes_are_ordered_by_parameters():
    big = SizePoint("large", 4_000_000, results([0.9, 0.7, 0.8], [0.85, 0.7, 0.7], 2.0))
    small = SizePoint("small", 300_000, results([0.6, 0.9, 0.6], [0.3, 0.5, 0.3], 8.0))
    summary = scaling_summary([big, small])
    assert [s["name"] for s in summary["sizes"]] == ["small", "large"]
    small_gap, large_gap = (s["methods"]["mov"]["gap_to_full"] for s in summary["tables"]["B"])
    assert small_gap["values"] == pytest.approx([0.3, 0.4, 0.3])
    assert large_gap["values"] == pytest.approx([0.05, 0.0, 0.1])
    # Unpaired, the full runs' spread (0.17) would swamp the small size's gap spread (0.058).
    assert small_gap["std"] == pytest.approx(0.0577, abs=1e-4)
    assert "gap_to_full" not in summary["tables"]["B"][0]["methods"]["full"]
    assert summary["trainable_percent"]["mov"] == [8.0, 2.0]
    text = format_scaling(summary, {"B": "B. held-out prompts"})
    assert "| MoV-10 | 36.7 ± 11.5 (+33.3 ± 5.8) | 75.0 ± 8.7 (+5.0 ± 5.0) |" in text
    assert "| Chance | 25.0 | 25.0 |" in text and "| MoV-10 | 8% | 2% |" in text


def test_a_method_run_on_other_seeds_than_full_ft_is_refused():
    point = SizePoint("small", 1, results([0.6, 0.9], [0.3, 0.5, 0.3], 8.0))
    with pytest.raises(ValueError, match="paired by seed"):
        scaling_summary([point])


def test_each_base_size_is_its_own_base_and_the_flag_selects_it():
    assert len({base_key(DemoConfig(base=spec)) for spec in BASE_SIZES.values()}) == 3
    assert BASE_SIZES["small"] == DemoConfig().base
    cfg = config_from_args(_parser().parse_args(["--base-size", "large"]))
    assert cfg.base == BASE_SIZES["large"] and cfg.base.d_model == 128


def test_a_model_and_a_base_size_together_are_refused(tmp_path, capsys):
    assert main(["--base-size", "medium", "--model", str(tmp_path)]) == 2
    assert "--model and --base-size both pick the base" in capsys.readouterr().err


def test_every_base_size_ships_built_from_its_spec():
    """Each size runs on a committed base (no 40-minute pre-training first); each base's
    ``pretraining.json`` records the spec it was built from."""
    found = [shipped_base(DemoConfig(base=spec)) for spec in BASE_SIZES.values()]
    assert found == list(SHIPPED_BASES)
