"""Adapter files as untrusted data: the metadata is covered by its own sha256, reading never
evaluates a pattern from the file, and no save waits on a FIFO. The error cases are in the
catalogue (``test_reliability_catalogue.py``); these are the inputs that must *work*."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

import mixlight as ml
import mixlight.adapter_file
import mixlight.extend as mlx
import mixlight.site_planning
from tests.core.test_reliability_catalogue import (
    CONFIG,
    metadata_sha256,
    rewrite_meta,
    saved,
    set_pattern,
    specs_and_arrays,
)


def embedded_meta(directory: Path) -> dict:
    data = (directory / "mixlight_adapter.safetensors").read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["mixlight.adapter"])


def test_the_metadata_sha256_covers_config_sites_and_base_record(tmp_path):
    meta = embedded_meta(saved(tmp_path))
    assert meta["format_version"] == "1.0"
    assert meta["metadata_sha256"] == metadata_sha256(meta).hexdigest()
    assert {"config", "base_model", "site_index", "arrays_sha256"} <= set(meta)
    assert meta["site_index"] == {"dec.k": 0, "enc.k": 0}


def test_reading_a_file_never_evaluates_its_patterns(tmp_path, monkeypatch):
    """A forged file (its hash recomputed) with a pattern that takes exponential time on its
    own paths is read, listed and inspected without matching it: the paths it recorded are
    taken as they are."""
    out = rewrite_meta(saved(tmp_path), lambda m: set_pattern(m, "(a|a)+b"))

    def no_matching(config, *args):
        raise AssertionError(f"the file's patterns were matched: {config.sites}")

    assert not hasattr(mixlight.adapter_file, "plan_sites")  # reading plans nothing
    monkeypatch.setattr(mixlight.site_planning, "plan_sites", no_matching)
    adapter = ml.read_adapter(out)
    assert [s.path for s in adapter.specs] == ["dec.k", "enc.k"]
    assert adapter.config.sites[0].pattern == "(a|a)+b"


def test_recorded_sites_equal_the_planned_ones(tmp_path):
    """Two sites of different kinds: each path keeps the site it was planned with."""
    config = ml.AdapterConfig(
        [ml.Site(r"enc\.k", mlx.Vectors()), ml.Site(r"dec\.k", mlx.LowRank(2))], 2
    )
    specs, arrays = specs_and_arrays(config=config)
    mlx.write_adapter(tmp_path / "a", config, specs, arrays)
    assert ml.read_adapter(tmp_path / "a").specs == specs


def _finishes(action, seconds: float = 30.0) -> bool:
    """Whether ``action()`` returns within ``seconds`` (a blocked open never would)."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (action(), done.set()), daemon=True)
    thread.start()
    thread.join(seconds)
    return done.is_set()


@pytest.mark.parametrize("name", ["README.md", "adapter_config.json"])
def test_a_fifo_beside_the_adapter_never_blocks_a_save(tmp_path, name):
    """A FIFO where the card goes (or where PEFT's config would be) is left alone: opening
    it to read would wait for a writer forever, while holding the directory's lock."""
    out = saved(tmp_path)
    (out / name).unlink(missing_ok=True)
    os.mkfifo(out / name)
    specs, arrays = specs_and_arrays(seed=1)
    assert _finishes(lambda: mlx.write_adapter(out, CONFIG, specs, arrays))
    assert (out / name).is_fifo()
    back = ml.read_adapter(out)
    assert all((back.arrays[k] == arrays[k]).all() for k in arrays)
