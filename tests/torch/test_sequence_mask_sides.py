"""Sequence routing on HF T5: each site pools with its own side's padding mask, also when the
source and target have the same length (issue 22, item 3): encoder sites and the
cross-attention keys/values with ``attention_mask``, every other decoder site with
``decoder_attention_mask`` (all positions when none is given). Masked positions then change
nothing: a masked pad gets no attention weight and no share of any pooled router input."""

import pytest
import torch

import mixlight as ml
import mixlight.extend as mlx
from mixlight_torch.model import adapter_layers
from tests.torch.conftest import perturb, tiny_t5

LENGTH = 6  # source and target alike
CONFIGS = {
    "mov-per-head": lambda: ml.MoV(4, routing="sequence"),
    "mov-whole-width": lambda: ml.MoV(4, routing="sequence", per_head=False),
    "molora": lambda: ml.MoLoRA(3, 2, routing="sequence"),
}


def _model(make):
    return perturb(ml.inject(tiny_t5("1.1"), make(), seed=0), scale=1.0)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 100, (2, LENGTH), generator=g)
    dec = torch.randint(2, 100, (2, LENGTH), generator=g)
    return ids, dec


def _logits(model, ids, mask, dec, dec_mask=None):
    kwargs = {"attention_mask": mask, "decoder_input_ids": dec, "decoder_attention_mask": dec_mask}
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def _padded(ids, pad_id=7):
    """``ids`` with one more position at the end, and the mask that hides it."""
    padded = torch.cat([ids, torch.full((ids.shape[0], 1), pad_id)], 1)
    mask = torch.ones_like(padded)
    mask[:, -1] = 0
    return padded, mask


@pytest.mark.parametrize("make", list(CONFIGS.values()), ids=list(CONFIGS))
def test_a_masked_source_pad_changes_no_logit(make):
    """The padded source is as long as the target; the unpadded one is not."""
    model = _model(make)
    ids, dec = _inputs()
    ids, mask = _padded(ids[:, :-1])
    want = _logits(model, ids[:, :-1], mask[:, :-1], dec)
    torch.testing.assert_close(_logits(model, ids, mask, dec), want, rtol=1e-5, atol=1e-5)
    unmasked = _logits(model, ids, torch.ones_like(mask), dec)
    assert (unmasked - want).abs().max() > 1e-2  # the pad would move the routing


@pytest.mark.parametrize("make", list(CONFIGS.values()), ids=list(CONFIGS))
def test_decoder_sites_pool_with_the_decoder_attention_mask(make):
    """A masked pad at the end of the target changes no earlier position's logits (causal
    self-attention hides it from them; the mask hides it from the pooled routing)."""
    model = _model(make)
    ids, dec = _inputs()
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # the source's padding differs from the target's
    dec, dec_mask = _padded(dec[:, :-1])
    want = _logits(model, ids, mask, dec[:, :-1])
    got = _logits(model, ids, mask, dec, dec_mask)[:, :-1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    unmasked = _logits(model, ids, mask, dec)[:, :-1]
    assert (unmasked - want).abs().max() > 1e-2


def _reads_source(path: str) -> bool:
    return path.startswith("encoder.") or path.endswith(("EncDecAttention.k", "EncDecAttention.v"))


@pytest.mark.parametrize("make", list(CONFIGS.values()), ids=list(CONFIGS))
def test_each_site_routes_on_its_own_sides_masked_mean(make):
    """Every site's routing equals the core's routing of its router input pooled with the
    mask this test picks by the site's path: the cross-attention keys/values with the source
    mask, though they sit in the decoder."""
    model = _model(make)
    ids, dec = _inputs(1)
    mask, dec_mask = torch.ones_like(ids), torch.ones_like(dec)
    mask[0, -2:] = 0
    dec_mask[1, -3:] = 0
    inputs = {}  # site path -> the input of its module
    layers = adapter_layers(model)
    hooks = [
        layer.register_forward_pre_hook(lambda m, args, p=path: inputs.update({p: args[0]}))
        for path, layer in layers.items()
    ]
    _logits(model, ids, mask, dec, dec_mask)
    for hook in hooks:
        hook.remove()
    assert any(p.endswith("EncDecAttention.k") for p in layers)
    for path, layer in layers.items():
        spec, x = layer.spec, inputs[path]
        with torch.no_grad():
            route_in = layer.base(x) if spec.reads == "output" else x
            side_mask = mask if _reads_source(path) else dec_mask
            want, _ = mlx.route(spec, layer.adapter["router"], route_in, side_mask)
        torch.testing.assert_close(layer.last_probs, want, rtol=1e-5, atol=1e-6, msg=path)


# --- a mask that does not fit its side's sequence (docs/reliability.md) ---------------------


@pytest.mark.parametrize(
    ("name", "length", "site"),
    [
        ("attention_mask", LENGTH + 2, "encoder."),
        ("decoder_attention_mask", LENGTH - 2, "decoder."),
    ],
)
def test_a_mask_of_the_wrong_length_is_refused_naming_site_mask_and_shapes(name, length, site):
    model = _model(CONFIGS["mov-per-head"])
    ids, dec = _inputs()
    with pytest.raises(ValueError) as err, torch.no_grad():
        model(input_ids=ids, decoder_input_ids=dec, **{name: torch.ones(2, length)})
    message = str(err.value)
    assert message.startswith(site) and f"{name} has shape [2, {length}]" in message, message
    assert f"[batch, seq] = [2, {LENGTH}]" in message and "pool over every position" in message
