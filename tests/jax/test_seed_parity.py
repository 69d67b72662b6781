"""One seed gives one adapter in every backend (sites are initialised in a canonical order)."""

import numpy as np
import pytest

pytest.importorskip("jax")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_same_seed_same_adapter_in_torch_and_jax(tmp_path):
    import mixlight as ml
    import mixlight.extend as mlx
    from mixlight_jax import t5

    cfg = transformers.T5Config(
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        vocab_size=100,
        decoder_start_token_id=0,
        feed_forward_proj="gated-gelu",
    )
    torch_model = transformers.T5ForConditionalGeneration(cfg)
    torch_model.save_pretrained(tmp_path)
    jax_model = t5.from_pretrained(tmp_path)
    for make in (lambda: ml.MoV(4), lambda: ml.MoLoRA(3, 2)):
        ml.inject(torch_model, make(), seed=7)
        ml.inject(jax_model, make(), seed=7)
        ours = mlx.load_backend("torch").adapter_state(torch_model)[2]
        theirs = mlx.load_backend("jax").adapter_state(jax_model)[2]
        assert ours.keys() == theirs.keys()
        for name in ours:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
        from mixlight_jax import remove_adapters as remove_jax
        from mixlight_torch import remove_adapters as remove_torch

        remove_torch(torch_model)
        remove_jax(jax_model)
