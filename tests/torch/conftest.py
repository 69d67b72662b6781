import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def tiny_t5_config(version="1.1", **overrides):
    kwargs = dict(
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        vocab_size=100,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        feed_forward_proj="gated-gelu" if version == "1.1" else "relu",
        tie_word_embeddings=version == "1.0",
        dropout_rate=0.0,
    )
    kwargs.update(overrides)
    return transformers.T5Config(**kwargs)


def tiny_t5(version="1.1", seed=0, **overrides):
    torch.manual_seed(seed)
    return transformers.T5ForConditionalGeneration(tiny_t5_config(version, **overrides)).eval()


def batch(seed=0, batch_size=2, src=7, tgt=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 100, (batch_size, src), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # padding in the first example
    dec = torch.randint(2, 100, (batch_size, tgt), generator=g)
    return ids, mask, dec


def perturb(model, scale=0.3, seed=1):
    """Move every adapter parameter off its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model
