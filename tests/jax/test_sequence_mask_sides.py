"""Sequence routing on the NNX T5: each site pools with its own side's padding mask, given by
keyword to ``mixlight_jax.sequence_masks``, also when the source and target have the same
length (issue 22, item 3); the torch T5 and the NNX T5 agree on one adapter file."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import mixlight as ml  # noqa: E402
from mixlight_jax import sequence_masks, t5  # noqa: E402
from tests.jax.test_named_adapters import TINY, perturb  # noqa: E402

LENGTH = 6  # source and target alike
CONFIGS = {
    "mov-per-head": lambda: ml.MoV(4, routing="sequence"),
    "mov-whole-width": lambda: ml.MoV(4, routing="sequence", per_head=False),
    "molora": lambda: ml.MoLoRA(3, 2, routing="sequence"),
}
RNG = np.random.default_rng(0)
IDS = RNG.integers(2, 100, (2, LENGTH))
DEC = RNG.integers(2, 100, (2, LENGTH))
MASK = np.ones_like(IDS)
MASK[0, -2:] = 0
DEC_MASK = np.ones_like(DEC)
DEC_MASK[1, -3:] = 0


def _model(make):
    config = t5.T5Config(**TINY, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model = t5.T5ForConditionalGeneration(config, rngs=nnx.Rngs(0))
    return perturb(ml.inject(model, make(), seed=0), scale=1.0)


@nnx.jit
def _logits(model, ids, mask, dec, dec_mask=None):
    with sequence_masks(model, attention_mask=mask, decoder_attention_mask=dec_mask):
        return model(ids, mask, dec, dec_mask)


def _padded(ids, pad_id=7):
    """``ids`` with one more position at the end, and the mask that hides it."""
    padded = np.concatenate([ids, np.full((ids.shape[0], 1), pad_id)], 1)
    mask = np.ones_like(padded)
    mask[:, -1] = 0
    return padded, mask


@pytest.mark.parametrize("make", list(CONFIGS.values()), ids=list(CONFIGS))
def test_a_masked_source_pad_changes_no_logit(make):
    """The padded source is as long as the target; the unpadded one is not."""
    model = _model(make)
    ids, mask = _padded(IDS[:, :-1])
    want = np.asarray(_logits(model, ids[:, :-1], mask[:, :-1], DEC))
    np.testing.assert_allclose(_logits(model, ids, mask, DEC), want, rtol=1e-5, atol=1e-5)
    unmasked = np.asarray(_logits(model, ids, np.ones_like(mask), DEC))
    assert np.abs(unmasked - want).max() > 1e-2  # the pad would move the routing


@pytest.mark.parametrize("make", list(CONFIGS.values()), ids=list(CONFIGS))
def test_decoder_sites_pool_with_the_decoder_attention_mask(make):
    """A masked pad at the end of the target changes no earlier position's logits (causal
    self-attention hides it from them; the mask hides it from the pooled routing)."""
    model = _model(make)
    dec, dec_mask = _padded(DEC[:, :-1])
    want = np.asarray(_logits(model, IDS, MASK, dec[:, :-1]))
    got = np.asarray(_logits(model, IDS, MASK, dec, dec_mask))[:, :-1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    unmasked = np.asarray(_logits(model, IDS, MASK, dec))[:, :-1]
    assert np.abs(unmasked - want).max() > 1e-2


@pytest.mark.parametrize("make", list(CONFIGS.values()), ids=list(CONFIGS))
def test_torch_and_jax_agree_with_padding_on_both_sides(make, tmp_path):
    """One adapter file, one base checkpoint: the same logits in both frameworks, each side
    padded its own way (the cross-attention keys/values pool with the source's mask)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(
        **TINY, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0
    )
    torch.manual_seed(0)
    torch_model = transformers.T5ForConditionalGeneration(config).eval()
    torch_model.save_pretrained(tmp_path / "base")
    ml.inject(torch_model, make(), seed=1)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in torch_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator))
        arrays = {"input_ids": IDS, "attention_mask": MASK, "decoder_input_ids": DEC}
        arrays["decoder_attention_mask"] = DEC_MASK
        want = torch_model(**{k: torch.tensor(a) for k, a in arrays.items()}).logits.numpy()
    ml.save_adapter(torch_model, tmp_path / "adapter")
    jax_model = ml.load_adapter(t5.from_pretrained(str(tmp_path / "base")), tmp_path / "adapter")
    got = _logits(jax_model, IDS, MASK, DEC, DEC_MASK)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


# --- bad input (docs/reliability.md) -------------------------------------------------------


def test_masks_given_by_position_are_refused_naming_the_keywords():
    model = _model(CONFIGS["mov-per-head"])
    with pytest.raises(TypeError) as err, sequence_masks(model, jnp.asarray(MASK)):
        pass
    message = str(err.value)
    assert "attention_mask=" in message and "decoder_attention_mask=" in message, message


@pytest.mark.parametrize(
    ("name", "length", "site"),
    [
        ("attention_mask", LENGTH + 2, "encoder."),
        ("decoder_attention_mask", LENGTH - 2, "decoder."),
    ],
)
def test_a_mask_of_the_wrong_length_is_refused_naming_site_mask_and_shapes(name, length, site):
    model = _model(CONFIGS["mov-per-head"])
    with pytest.raises(ValueError) as err, sequence_masks(model, **{name: np.ones((2, length))}):
        model(jnp.asarray(IDS), None, jnp.asarray(DEC))
    message = str(err.value)
    assert message.startswith(site) and f"{name} has shape [2, {length}]" in message, message
    assert f"[batch, seq] = [2, {LENGTH}]" in message and "pool over every position" in message


@pytest.mark.parametrize("make", list(CONFIGS.values()), ids=list(CONFIGS))
def test_the_nnx_t5_gives_its_sites_its_own_masks(make):
    """Called plainly, as a training step calls it (no ``sequence_masks`` block), the NNX
    T5 hands its ``attention_mask`` / ``decoder_attention_mask`` to its sequence-routed
    sites, as the torch backend's hooks do: a masked pad on either side changes nothing."""
    model = _model(make)
    plain = nnx.jit(lambda m, *args: m(*args))
    ids, mask = _padded(IDS[:, :-1])
    dec, dec_mask = _padded(DEC[:, :-1])
    want = np.asarray(_logits(model, ids[:, :-1], mask[:, :-1], dec[:, :-1]))
    got = np.asarray(plain(model, ids, mask, dec, dec_mask))[:, :-1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    hidden = model.encode(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(
        hidden[:, :-1], model.encode(jnp.asarray(ids[:, :-1]), jnp.asarray(mask[:, :-1])),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
