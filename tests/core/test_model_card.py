"""The README.md model card: the Hub's front matter, what the card says, and that it is part
of the save protocol without ever costing the adapter."""

import os

import numpy as np
import pytest

import mixlight as ml
import mixlight.extend as mlx
from mixlight import _model_card
from mixlight._base_identity import BaseIdentity
from tests.core.dict_backend import dict_backend, t5_like

CONFIG = ml.MoV(3, targets=[".*k"])
PATHS = ["enc.k", "dec.k"]


def specs_and_arrays():
    specs = mlx.plan_sites(CONFIG, {p: mlx.ModuleShape(8, 8) for p in PATHS})
    rng = np.random.default_rng(0)
    return specs, {s.canonical_name(n): a for s in specs for n, a in s.init_params(rng).items()}


def front_matter(text):
    """The YAML front matter of a card (the flat subset cards use: keys, lists of strings)."""
    assert text.startswith("---\n")
    meta: dict = {}
    key = None
    for line in text.split("---\n")[1].splitlines():
        if line.startswith("- "):
            meta[key].append(line[2:])
        else:
            key, _, value = line.partition(":")
            meta[key] = value.strip() or []
    return meta


def test_a_saved_model_gets_a_hub_card(tmp_path):
    with dict_backend():
        model = ml.inject(t5_like(), ml.MoV(4), seed=0)
        out = ml.save_adapter(model, tmp_path / "mov")
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "mixlight"
    assert {"mixlight", "mixture-of-experts", "mov"} <= set(meta["tags"])
    assert "base_model" not in meta  # unknown here
    adapter = sum(a.size for a in ml.read_adapter(out).arrays.values())
    share = 100 * adapter / (adapter + 10_000)  # the dict backend's total
    for expected in (
        "# MoV-4 adapter",
        "| experts | 4 (soft merge, token routing) |",
        f"| adapter parameters | {adapter:,} |",
        f"| trainable share | {share:.4f}% of {adapter + 10_000:,} parameters |",
        "DenseReluDense",
        "from transformers import T5ForConditionalGeneration",
        "from mixlight_jax import t5",
        'ml.load_adapter(model, "path/to/this/directory")',
        "arXiv:2309.05444",
    ):
        assert expected in text, expected


def test_the_card_names_a_hub_base_model_and_the_routing():
    specs, _ = specs_and_arrays()
    routing = {
        "enc.k": {
            "mean_prob": np.array([0.5, 0.3, 0.2]),
            "top1_share": np.array([1.0, 0, 0]),
            "entropy": 1.03,
        }
    }
    facts = _model_card.CardFacts(1_000_000, routing)
    text = _model_card.render_card(
        CONFIG, specs, BaseIdentity("google/t5-v1_1-small", "abc"), facts
    )
    assert front_matter(text)["base_model"] == "google/t5-v1_1-small"
    assert "| `enc.k` | 0.50 0.30 0.20 | 1.00 0.00 0.00 | 1.030 |" in text
    assert 'ml.load_adapter(model, "path/to/this/directory")' in text
    assert "revision abc" in text
    local = _model_card.render_card(CONFIG, specs, BaseIdentity("/data/ckpt/t5"), facts)
    assert "base_model" not in front_matter(local)  # a local path is no Hub id
    assert "for /data/ckpt/t5" in local


def test_a_users_readme_is_kept_and_mixlights_is_replaced(tmp_path):
    specs, arrays = specs_and_arrays()
    (tmp_path / "README.md").write_text("# my notes\n")
    mlx.write_adapter(tmp_path, CONFIG, specs, arrays)
    assert (tmp_path / "README.md").read_text() == "# my notes\n"
    os.unlink(tmp_path / "README.md")
    mlx.write_adapter(tmp_path, CONFIG, specs, arrays)
    first = (tmp_path / "README.md").read_text()
    mlx.write_adapter(tmp_path, CONFIG, specs, arrays, base=BaseIdentity("t5-small"))
    assert (tmp_path / "README.md").read_text() != first  # rewritten: it was mixlight's


def test_a_card_that_fails_never_costs_the_adapter(tmp_path, monkeypatch):
    specs, arrays = specs_and_arrays()

    def broken(*args):
        raise KeyError("oops")

    monkeypatch.setattr(_model_card, "render_card", broken)
    with pytest.warns(UserWarning, match="saved without its README.md model card.*KeyError"):
        mlx.write_adapter(tmp_path, CONFIG, specs, arrays)
    assert not (tmp_path / "README.md").exists()
    assert set(ml.read_adapter(tmp_path).arrays) == set(arrays)
