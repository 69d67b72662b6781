"""Torch inputs that used to fail or be silently wrong: routed sites given 0 tokens, routing
statistics after a disabled pass, the meta-device path, and the base model's identity."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mixlight as ml  # noqa: E402
import mixlight.extend as mlx  # noqa: E402
from tests.torch.conftest import batch, perturb, tiny_t5, tiny_t5_config  # noqa: E402
from tests.torch.test_reliability_catalogue import model  # noqa: E402

ROUTED = {
    "MoV": ml.MoV(3, targets=[r".*\.(k|v)"]),
    "MoV per head": ml.AdapterConfig([ml.Site(r".*\.(k|v)", mlx.Vectors(), heads="auto")], 3),
    "MoV top-1": ml.MoV(3, targets=[r".*\.(k|v)"], router=ml.TopK(1, renormalize=False)),
    "MoLoRA": ml.MoLoRA(3, 2, targets=[r".*\.(k|v|wo)"]),
    "MoLoRA top-2": ml.MoLoRA(3, 2, targets=[r".*\.(k|v)"], router=ml.TopK(2)),
    "MoLoRA on outputs": ml.AdapterConfig(
        [ml.Site(r".*\.wi", mlx.LowRank(2), router_input="output")], 3
    ),
}


@pytest.mark.parametrize("name", list(ROUTED))
@pytest.mark.parametrize("shape", [(0, 8), (2, 0, 8), (0, 5, 8)])
def test_routed_sites_accept_zero_tokens(name, shape):
    m = ml.inject(model(0), ROUTED[name], seed=0)
    m(torch.randn(3, 8))  # statistics of a real batch first
    x = torch.zeros(*shape, requires_grad=True)
    out = m(x)
    assert out.shape == shape
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == shape
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is None or not g.any() for g in grads)
    assert ml.routing_stats(m) == {}  # nothing was routed in the last pass
    assert float(ml.aux_losses(m)) == 0.0


def test_routing_stats_describe_the_last_pass_only():
    m = ml.inject(model(0), ROUTED["MoV"], seed=0)
    m(torch.randn(4, 8))
    assert set(ml.routing_stats(m)) == {"0.k", "0.v", "1.k", "1.v"}
    with ml.disable_adapters(m):
        m(torch.randn(4, 8))
    assert ml.routing_stats(m) == {}
    m(torch.randn(4, 8))
    assert set(ml.routing_stats(m)) == {"0.k", "0.v", "1.k", "1.v"}


def test_meta_inject_then_to_empty_starts_from_the_seeded_values(tmp_path):
    cfg = tiny_t5_config()
    with torch.device("meta"):
        lazy = transformers.T5ForConditionalGeneration(cfg)
    ml.inject(lazy, ml.MoV(2), seed=3)
    lazy.to_empty(device="cpu")
    real = ml.inject(tiny_t5(), ml.MoV(2), seed=3)
    lazy.load_state_dict(tiny_t5().state_dict(), strict=False)  # base weights, as users do
    ours = mlx.load_backend("torch").adapter_state(lazy)[2]
    for name, value in mlx.load_backend("torch").adapter_state(real)[2].items():
        assert (ours[name] == value).all(), name
    ml.save_adapter(lazy, tmp_path / "a")


def test_meta_to_empty_then_load_gives_the_saved_adapter(tmp_path):
    trained = perturb(ml.inject(tiny_t5(), ml.MoV(2), seed=0))
    ml.save_adapter(trained, tmp_path)
    with torch.device("meta"):
        lazy = transformers.T5ForConditionalGeneration(tiny_t5_config())
    lazy.to_empty(device="cpu")
    lazy.load_state_dict(tiny_t5().state_dict())
    ml.load_adapter(lazy, tmp_path)
    ids, mask, dec = batch()
    with torch.no_grad():
        expected = trained(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        got = lazy.eval()(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, expected)


def test_identity_survives_dtype_but_not_other_weights(tmp_path):
    ml.save_adapter(ml.inject(tiny_t5(seed=0), ml.MoV(2), seed=0), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ml.load_adapter(tiny_t5(seed=0), tmp_path)
        ml.load_adapter(tiny_t5(seed=0).to(torch.bfloat16), tmp_path)
    with pytest.warns(UserWarning, match="weights differ"):
        ml.load_adapter(tiny_t5(seed=1), tmp_path)
    named = tiny_t5(seed=0)
    named.config._name_or_path = "google/t5-other"  # the file's name is unknown: not compared
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ml.load_adapter(named, tmp_path)


def test_identity_names_are_compared_when_both_are_known(tmp_path):
    source = tiny_t5(seed=0)
    source.config._name_or_path = "google/t5-a"
    ml.save_adapter(ml.inject(source, ml.MoV(2), seed=0), tmp_path)
    assert ml.read_adapter(tmp_path).base_identity.name == "google/t5-a"
    target = tiny_t5(seed=0)
    target.config._name_or_path = "google/t5-b"
    with pytest.warns(UserWarning, match="name was 'google/t5-a', this model's is 'google/t5-b'"):
        ml.load_adapter(target, tmp_path)


def test_meta_load_then_to_empty_gives_the_saved_adapter(tmp_path):
    """Loading into a model on the meta device keeps the file's values until the model has
    storage, as injection keeps its initial values (a 3B model never exists twice)."""
    trained = perturb(ml.inject(tiny_t5(), ml.MoV(2), seed=0))
    ml.save_adapter(trained, tmp_path)
    with torch.device("meta"):
        lazy = transformers.T5ForConditionalGeneration(tiny_t5_config())
    ml.load_adapter(lazy, tmp_path)
    with pytest.raises(ValueError, match="meta device"):
        ml.save_adapter(lazy, tmp_path / "early")
    lazy.to_empty(device="cpu")
    missing = lazy.load_state_dict(tiny_t5().state_dict(), strict=False).missing_keys
    assert missing and all(".adapters.default." in k for k in missing)  # base weights only
    ids, mask, dec = batch()
    with torch.no_grad():
        expected = trained(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        got = lazy.eval()(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, expected)
