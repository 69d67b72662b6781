"""The catalogue of bad inputs, torch part: the model cases of
``tests/core/test_reliability_catalogue.py`` on torch modules, and torch's own (PEFT, meta)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import mixlight as ml  # noqa: E402
from tests.core.test_reliability_catalogue import (  # noqa: E402
    MOV_KV,
    Case,
    Kit,
    check_case,
    check_refused_loads_change_nothing,
    model_cases,  # noqa: E402
)
from tests.torch.conftest import tiny_t5, tiny_t5_config  # noqa: E402


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.n_heads = 2
        self.k, self.v = nn.Linear(width, width), nn.Linear(width, width)
        self.wi, self.act, self.wo = nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, width)

    def forward(self, x):
        return self.wo(self.act(self.wi(self.k(x) + self.v(x))))


def model(seed: int = 0, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(Block(width), Block(width))


def poison(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.fill_(float("nan"))
    return m


def peft_t5():
    peft = pytest.importorskip("peft")
    return peft.get_peft_model(tiny_t5(), peft.LoraConfig(r=2, target_modules=["q", "v"]))


def meta_t5():
    with torch.device("meta"):
        return ml.inject(
            __import__("transformers").T5ForConditionalGeneration(tiny_t5_config()), ml.MoV(2)
        )


def layout(m: nn.Module) -> list:
    """Module types and which parameters train: what a refused load must not change."""
    return [(n, type(x).__name__) for n, x in m.named_modules()] + [
        (n, p.requires_grad) for n, p in m.named_parameters()
    ]


KIT = Kit("torch", model, lambda: nn.Linear(8, 8), poison, "jax", layout)
CASES = model_cases(KIT) + [
    Case(
        "torch: inject into a PEFT-wrapped T5",
        lambda t: ml.inject(peft_t5(), ml.MoV(2)),
        TypeError,
        "is a PEFT layer .*already wrapped by PEFT",
        r"unload\(\)",
    ),
    Case(
        "torch: save a model on the meta device",
        lambda t: ml.save_adapter(meta_t5(), t / "a"),
        ValueError,
        "cannot save the adapter: .* meta device",
        r"to_empty\(device=",
    ),
    Case(
        "torch: bare Linear with a MoV",
        lambda t: ml.inject(nn.Linear(8, 8), MOV_KV),
        TypeError,
        "Linear has none",
        r"nn\.Sequential\(layer\)",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_clear_error(case, tmp_path):
    check_case(case, tmp_path)


def test_a_refused_load_changes_nothing(tmp_path):
    check_refused_loads_change_nothing(KIT, tmp_path)
