"""The README's torch example runs as written and computes what it says: the trainable
count of MoV-10 on that T5 (counted here by hand), one AdamW step on the experts, the saved
file equal to the trained adapter and loaded unchanged, routing statistics per site."""

import pathlib
import re

import numpy as np
import pytest
import torch

import mixlight as ml
from mixlight_torch.model import adapter_parameters

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(heading):
    text = README.read_text()
    section = text.split(heading, 1)[1]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


def _mov_10_count(d_model=64, d_kv=16, d_ff=128, experts=10) -> int:
    """Router + vectors per site: k/v route per head ([d_kv, E] shared) and scale d_model
    (heads * d_kv); the FFN activation routes and scales d_ff. 2 encoder layers with 3
    sites (k, v, act), 2 decoder layers with 5 (self k/v, cross k/v, act)."""
    attention = d_kv * experts + experts * d_model
    ffn = d_ff * experts + experts * d_ff
    return (2 * 2 + 2 * 4) * attention + (2 + 2) * ffn


# The README loads into a fresh random T5 ("same base weights in real use"): expected warning.
@pytest.mark.filterwarnings("ignore:adapter at out/mov was trained on a different base model")
def test_torch_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {}
    exec(compile(python_blocks("## Example (torch + HF T5)"), "README", "exec"), namespace)
    model, fresh = namespace["model"], namespace["fresh"]
    assert ml.trainable_parameters(model).trainable == _mov_10_count() == 19840
    trained = {n: p.detach().numpy() for n, p in adapter_parameters(model)}
    # One AdamW step from all-ones experts: each entry with a gradient moves by lr (Adam's
    # first step is lr * sign(g)) plus the decay lr * wd * 1.
    moved = np.concatenate([np.abs(a - 1).ravel() for n, a in trained.items() if "vectors" in n])
    # (entries whose gradient is within a few eps of 0 move less; none moves more)
    assert moved.max() <= 3e-3 * (1 + 0.01) + 1e-6
    assert (np.abs(moved - 3e-3) < 5e-5).mean() > 0.95
    saved = ml.read_adapter(tmp_path / "out/mov").arrays
    loaded = {n: p.detach().numpy() for n, p in adapter_parameters(fresh)}
    assert saved.keys() == trained.keys() == loaded.keys()
    for name, array in trained.items():
        np.testing.assert_array_equal(saved[name], array, err_msg=name)
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)
    stats = ml.routing_stats(model)
    assert len(stats) == 16
    for site, s in stats.items():
        np.testing.assert_allclose(s["mean_prob"].sum(), 1.0, rtol=1e-5, err_msg=site)
