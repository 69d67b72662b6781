"""Named adapters (add, switch, delete, save/load by name, one adapter per example) and
merging into the base weights, against the unmerged model."""

import numpy as np
import pytest
import torch

import mixlight as ml
import mixlight.extend as mlx
from tests.torch.conftest import batch, perturb, tiny_t5

# (IA)³ on the FFN activation and LoRA on the wo it feeds, in one adapter: the merge must
# fold LoRA into wo before scaling wo's inputs, whatever order the modules are listed in.
ACT_AND_WO = ml.AdapterConfig(
    [
        ml.Site(r".*DenseReluDense\.act", mlx.Vectors()),
        ml.Site(r".*DenseReluDense\.wo", mlx.LowRank(2)),
    ],
    1,
)


def logits(model, seed=0):
    ids, mask, dec = batch(seed)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits


def two_adapters():
    model = perturb(ml.inject(tiny_t5(), ml.MoV(3), seed=1), seed=1)
    ml.inject(model, ml.LoRA(2), seed=2, adapter_name="lora")
    ml.set_adapter(model, "lora")
    perturb(model, seed=2)
    ml.set_adapter(model, "default")
    return model


def test_named_adapters_switch_train_and_delete():
    model = two_adapters()
    assert ml.adapter_names(model) == ["default", "lora"]
    mov = logits(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.default." in n for n in trainable)
    ml.set_adapter(model, "lora")
    assert ml.adapter_names(model)[0] == "lora"
    assert all(".adapters.lora." in n for n, p in model.named_parameters() if p.requires_grad)
    lora = logits(model)
    assert not torch.allclose(mov, lora, atol=1e-3)
    with ml.disable_adapters(model):
        base = logits(model)
    assert torch.allclose(base, logits(tiny_t5()), atol=1e-6)
    ml.delete_adapter(model, "lora")  # the active one: "default" takes over
    assert ml.adapter_names(model) == ["default"]
    assert torch.allclose(logits(model), mov, atol=1e-6)
    with pytest.raises(KeyError, match="no adapter named 'lora'.*default"):
        ml.set_adapter(model, "lora")
    ml.delete_adapter(model, "default")
    assert "mixlight_state" not in model.__dict__
    assert torch.allclose(logits(model), base, atol=1e-6)
    again = ml.remove_adapters(two_adapters())
    assert "mixlight_state" not in again.__dict__ and "save_pretrained" not in again.__dict__
    assert torch.allclose(logits(again), base, atol=1e-6)


def test_save_and_load_by_name(tmp_path):
    model = two_adapters()
    ml.save_adapter(model, tmp_path / "lora", adapter_name="lora")
    ml.save_adapter(model, tmp_path / "mov")
    assert ml.read_adapter(tmp_path / "lora").config == ml.LoRA(2)
    fresh = ml.load_adapter(tiny_t5(), tmp_path / "mov")
    ml.load_adapter(fresh, tmp_path / "lora", adapter_name="task_b")
    assert ml.adapter_names(fresh) == ["default", "task_b"]  # added inactive, as in PEFT
    assert torch.allclose(logits(fresh), logits(model), atol=1e-6)
    ml.set_adapter(model, "lora")
    ml.set_adapter(fresh, "task_b")
    assert torch.allclose(logits(fresh), logits(model), atol=1e-6)


def test_each_example_runs_its_own_adapter():
    model = two_adapters()
    ids, mask, dec = batch(0, batch_size=3)

    def run():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits

    alone = {}
    for name in ("default", "lora"):
        ml.set_adapter(model, name)
        alone[name] = run()
    with ml.disable_adapters(model):
        alone["__base__"] = run()
    names = ["lora", "__base__", "default"]
    with ml.adapter_per_example(model, names):
        mixed = run()
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[i], alone[name][i], atol=1e-5, rtol=1e-5)
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        ml.adapter_per_example(model, ["nope"]).__enter__()


def test_each_example_runs_its_own_adapter_under_generate_with_beams():
    model = two_adapters()
    ids, mask, _ = batch(0, batch_size=2)
    kwargs = dict(max_new_tokens=4, num_beams=2, do_sample=False)
    alone = []
    for i, name in enumerate(["lora", "default"]):
        ml.set_adapter(model, name)
        alone.append(
            model.generate(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1], **kwargs)
        )
    with ml.adapter_per_example(model, ["lora", "default"]):
        mixed = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    for i, one in enumerate(alone):
        assert mixed[i, : one.shape[1]].tolist() == one[0].tolist()


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize(
    "config",
    [ml.IA3(), ml.LoRA(4), ml.MoV(1), ml.MoLoRA(1, rank=2), ACT_AND_WO],
    ids=["ia3", "lora", "mov-1", "molora-1", "act-and-wo"],
)
def test_one_expert_merges_exactly(config, version):
    """Exact up to float32 rounding (the adapter moves logits by several units here; a wrong
    transpose, site or scale moves them by as much)."""
    model = perturb(ml.inject(tiny_t5(version), config, seed=0), scale=0.05)
    want = logits(model)
    with ml.disable_adapters(model):
        assert (logits(model) - want).abs().max() > 0.1
    merged = ml.merge_and_unload(model)
    assert "mixlight_state" not in merged.__dict__ and "save_pretrained" not in merged.__dict__
    assert type(merged).__name__ == "T5ForConditionalGeneration"
    assert not any("adapters" in k or ".base." in k for k in merged.state_dict())
    torch.testing.assert_close(logits(merged), want, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("config", [ml.MoV(4), ml.MoLoRA(3, rank=2)], ids=["mov", "molora"])
def test_routed_merge_at_uniform_routing_equals_uniform_routers(config):
    """Zero routers route uniformly, so the unmerged model is exactly the merge at uniform
    routing: checks the merge math of every site kind (per-head MoV included)."""
    model = perturb(ml.inject(tiny_t5(), config, seed=0), scale=0.05)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".router"):
                p.zero_()
    want = logits(model)
    routing = ml.mean_routing(model, [_kwargs(0), _kwargs(1)])
    for probs in routing.values():
        np.testing.assert_allclose(probs, np.full_like(probs, 1 / probs.shape[-1]), atol=1e-6)
    merged = ml.merge_and_unload(model, routing=routing)
    torch.testing.assert_close(logits(merged), want, atol=5e-5, rtol=1e-5)


def _kwargs(seed):
    ids, mask, dec = batch(seed)
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}


def test_routed_merge_needs_a_routing_and_refuses_bad_ones_without_changing_the_model():
    model = perturb(ml.inject(tiny_t5(), ml.MoV(4), seed=0))
    before = logits(model)
    with pytest.raises(ValueError, match="routes between 4 experts.*mean_routing"):
        ml.merge_and_unload(model)
    routing = ml.mean_routing(model, [_kwargs(0)])
    path = next(iter(routing))
    with pytest.raises(ValueError, match=r"shape \[4\]; this site needs \[4, 4\]"):
        ml.merge_and_unload(model, routing={**routing, path: np.full(4, 0.25)})
    with pytest.raises(ValueError, match="not a probability distribution"):
        ml.merge_and_unload(model, routing={**routing, path: routing[path] * 2})
    assert "mixlight_state" in model.__dict__
    torch.testing.assert_close(logits(model), before, atol=0, rtol=0)


def test_mean_routing_leaves_out_padding():
    model = perturb(ml.inject(tiny_t5(), ml.MoLoRA(3, rank=2), seed=0))
    ids, mask, dec = batch(0)
    full = ml.mean_routing(
        model, [{"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}]
    )
    path = next(p for p in full if p.startswith("encoder") and p.endswith("SelfAttention.q"))
    model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    probs = dict(ml_layers(model))[path].last_probs.detach().numpy()
    want = probs[mask.numpy().astype(bool)].mean(0)
    np.testing.assert_allclose(full[path], want, atol=1e-6)
    assert not np.allclose(full[path], probs.reshape(-1, 3).mean(0), atol=1e-6)


def ml_layers(model):
    from mixlight_torch.model import adapter_layers

    return adapter_layers(model).items()


def test_mean_routing_weighs_each_side_by_its_own_mask_when_lengths_are_equal():
    """Source and target of the same length: encoder-side sites (and cross-attention k/v)
    take the source's padding, decoder-side sites the target's."""
    model = perturb(ml.inject(tiny_t5(), ml.MoLoRA(3, rank=2), seed=0))
    ids, mask, _ = batch(0, src=6)
    dec = torch.randint(2, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    dec_mask = torch.ones_like(dec)
    dec_mask[1, -3:] = 0  # different padding on the target side
    args = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}
    means = ml.mean_routing(model, [{**args, "decoder_attention_mask": dec_mask}])
    model(**args, decoder_attention_mask=dec_mask)
    for path, layer in ml_layers(model):
        source = path.startswith("encoder") or path.endswith(
            ("EncDecAttention.k", "EncDecAttention.v")
        )
        keep = (mask if source else dec_mask).numpy().astype(bool)
        want = layer.last_probs.detach().numpy()[keep].mean(0)
        np.testing.assert_allclose(means[path], want, atol=1e-6, err_msg=path)


def test_an_activation_site_is_sized_by_a_consumer_another_adapter_already_wraps():
    """LoRA first wraps wo; a MoV added beside it still sizes the FFN activation by wo."""
    model = ml.inject(tiny_t5(), ml.LoRA(2), seed=0)
    ml.inject(model, ml.MoV(3), adapter_name="mov", seed=1)
    act = next(
        s for s in model.mixlight_state.adapters.site_specs["mov"] if s.path.endswith(".act")
    )
    assert (act.d_in, act.d_out) == (64, 64)
