"""The README's JAX example runs as written (on a tiny checkpoint written here) and computes
what it says: its printed step-0 loss is the base model's next-token cross-entropy by torch
(HF shifts the labels right itself; a fresh adapter is the identity) -- a decoder fed the
unshifted labels sees its own targets and prints another number -- and the saved adapter
gives torch the JAX model's logits."""

import pathlib
import re

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_jax_example_and_round_trip_into_torch(tmp_path, monkeypatch, capsys):
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
    namespace = {}
    exec(
        compile(code.replace("path/to/hf-t5", str(tmp_path / "hf-t5")), "README", "exec"), namespace
    )
    printed_loss = float(capsys.readouterr().out.strip().splitlines()[-1])
    torch_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf-t5")
    ids = torch.tensor(np.array(namespace["ids"]), dtype=torch.long)
    assert len(set(ids.flatten().tolist())) > 4  # varied tokens: shifting changes the inputs
    with torch.no_grad():
        base_loss = torch_model(input_ids=ids, labels=ids).loss.item()  # HF shifts right
        base_logits = torch_model(input_ids=ids, decoder_input_ids=ids).logits
    unshifted_loss = torch.nn.functional.cross_entropy(base_logits.flatten(0, 1), ids.flatten())
    assert abs(unshifted_loss.item() - base_loss) > 1e-2  # the check below can tell them apart
    np.testing.assert_allclose(printed_loss, base_loss, rtol=1e-4)
    ml.load_adapter(torch_model, tmp_path / "out/mov-jax")
    saved = ml.read_adapter(tmp_path / "out/mov-jax").arrays
    vectors = saved["encoder.block.0.layer.0.SelfAttention.k.vectors"]
    assert not np.allclose(vectors, 1.0)  # the optimizer step moved the experts
    jax_logits = np.asarray(
        namespace["model"](input_ids=np.asarray(ids), decoder_input_ids=np.asarray(ids))
    )
    with torch.no_grad():
        torch_logits = torch_model(input_ids=ids, decoder_input_ids=ids).logits.numpy()
    assert np.abs(torch_logits - base_logits.numpy()).max() > 1e-4  # the adapter is in use
    np.testing.assert_allclose(torch_logits, jax_logits, atol=1e-4, rtol=0)
