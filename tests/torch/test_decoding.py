"""Decoding with real injected adapters on HF T5: per-step logits of cached ``generate``,
uncached ``generate`` and teacher-forced recomputation agree (token routing, soft and top-k,
MoV and MoLoRA; sequence routing on the source side); sequence routing on decoder-side sites
is refused under a key/value cache and correct without one."""

import pytest
import torch

import mixlight as ml
from tests.torch.conftest import batch, perturb, tiny_t5

SOURCE_SIDE = [r"encoder\..*\.(?:k|v)", r".*EncDecAttention\.(?:k|v)", r"encoder\..*\.act"]
CONFIGS = {
    "mov-soft": lambda: ml.MoV(4),
    "mov-top2": lambda: ml.MoV(4, router=ml.TopK(2)),
    "molora-soft": lambda: ml.MoLoRA(4, 2),
    "molora-top1-raw": lambda: ml.MoLoRA(4, 2, router=ml.TopK(1, renormalize=False)),
    "mov-sequence-source": lambda: ml.MoV(4, targets=SOURCE_SIDE, routing="sequence"),
}


def _generate(model, ids, mask, use_cache):
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=8,
        do_sample=False,
        num_beams=1,
        use_cache=use_cache,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences, torch.stack(out.logits, 1)  # [batch, steps, vocab]


def _teacher_forced(model, ids, mask, sequences):
    """The logits for each generated position, from one full forward on the sequences."""
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=sequences).logits


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_uncached_and_teacher_forced_logits_agree(name):
    model = perturb(ml.inject(tiny_t5(), CONFIGS[name]()), scale=0.5)
    ids, mask, _ = batch()
    cached, cached_logits = _generate(model, ids, mask, use_cache=True)
    uncached, uncached_logits = _generate(model, ids, mask, use_cache=False)
    torch.testing.assert_close(cached, uncached)
    torch.testing.assert_close(cached_logits, uncached_logits, rtol=1e-4, atol=1e-4)
    steps = cached_logits.shape[1]
    forced = _teacher_forced(model, ids, mask, cached[:, :steps])
    # rows that finished keep being padded; compare every step of each row up to its EOS
    alive = torch.ones(cached.shape[0], steps, dtype=torch.bool)
    ended = (cached[:, 1:] == model.config.eos_token_id).cumsum(1) > 0
    alive[:, 1:] = ~ended[:, : steps - 1]
    torch.testing.assert_close(forced[alive], cached_logits[alive], rtol=1e-4, atol=1e-4)
    assert (cached_logits[:, 1:] - cached_logits[:, :-1]).abs().max() > 1e-2  # steps differ


@pytest.mark.parametrize(
    "make",
    [lambda: ml.MoV(4, routing="sequence"), lambda: ml.MoLoRA(3, 2, routing="sequence")],
    ids=["mov", "molora"],
)
def test_sequence_routing_on_decoder_sites_is_refused_with_a_cache_or_correct(make):
    """Uncached, each step routes on the whole prefix so far (the teacher-forced logits of
    that prefix); cached decoding must give the same logits or refuse clearly."""
    model = perturb(ml.inject(tiny_t5(), make()), scale=0.5)
    ids, mask, _ = batch()
    sequences, logits = _generate(model, ids, mask, use_cache=False)
    for step in range(logits.shape[1]):
        prefix = _teacher_forced(model, ids, mask, sequences[:, : step + 1])[:, -1]
        torch.testing.assert_close(prefix, logits[:, step], rtol=1e-4, atol=1e-4)
    try:
        cached, cached_logits = _generate(model, ids, mask, use_cache=True)
    except ValueError as err:
        assert "sequence routing" in str(err) and "use_cache=False" in str(err), err
        return
    torch.testing.assert_close(cached, sequences)
    torch.testing.assert_close(cached_logits, logits, rtol=1e-4, atol=1e-4)
