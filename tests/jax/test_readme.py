"""The README's JAX example runs as written (on a tiny checkpoint written here)."""

import pathlib
import re

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_jax_example_and_round_trip_into_torch(tmp_path, monkeypatch):
    import mixlight as ml

    torch.manual_seed(0)
    cfg = transformers.T5Config(
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        vocab_size=100,
        decoder_start_token_id=0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    transformers.T5ForConditionalGeneration(cfg).save_pretrained(tmp_path / "hf-t5")
    code = re.findall(
        r"```python\n(.*?)```", README.read_text().split("## Example (JAX", 1)[1], flags=re.S
    )[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("path/to/hf-t5", str(tmp_path / "hf-t5")), "README", "exec"), {})
    torch_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf-t5")
    ml.load_adapter(torch_model, tmp_path / "out/mov-jax")
    saved = ml.read_adapter(tmp_path / "out/mov-jax").arrays
    vectors = saved["encoder.block.0.layer.0.SelfAttention.k.vectors"]
    assert not np.allclose(vectors, 1.0)  # the optimizer step moved the experts
