"""NNX T5 (mixlight_jax.t5): loader, cached greedy decoding and module paths on tiny random
checkpoints; logits and generation against HuggingFace's torch T5 where torch is installed."""

import importlib.util
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from mixlight_jax.t5 import (
    CheckpointError,
    T5Config,
    T5ConfigError,
    T5EncoderModel,
    T5ForConditionalGeneration,
    from_pretrained,
    greedy_generate,
    hf_state_key,
    module_paths,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any transformers import

MAX_NEW_TOKENS = 8
INPUT_IDS = np.array(
    [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 2, 0, 0, 0], [0, 0, 21, 22, 23, 24, 25]]
)
ATTENTION_MASK = (INPUT_IDS != 0).astype(np.int32)
# as long as a greedy run, so teacher forcing and the uncached greedy reference share one compile
DECODER_INPUT_IDS = np.array(
    [[0, 3, 4, 5, 6, 7, 8, 9, 10], [0, 7, 8, 0, 0, 0, 0, 0, 0], [0, 30, 31, 32, 33, 34, 35, 36, 0]]
)
DECODER_ATTENTION_MASK = np.array([[1] * 9, [1, 1, 1, 0, 0, 0, 0, 0, 0], [1] * 8 + [0]])

VARIANTS = {
    # name: (feed_forward_proj, tie_word_embeddings, scale_decoder_outputs)
    "v1.0": ("relu", True, True),
    "v1.1": ("gated-gelu", False, False),
    "v1.1-tied-unscaled": ("gated-gelu", True, False),  # what HF >= 5 saves for a fresh v1.1
}
TINY = {"vocab_size": 100, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2}
TINY |= {"num_decoder_layers": 2, "num_heads": 4, "decoder_start_token_id": 0}
TINY |= {"pad_token_id": 0, "eos_token_id": 1}


def _config_dict(variant: str) -> dict:
    feed_forward_proj, tie, scale = VARIANTS[variant]
    return {
        "model_type": "t5",
        **TINY,
        "feed_forward_proj": feed_forward_proj,
        "tie_word_embeddings": tie,
        "scale_decoder_outputs": scale,
    }


def _random_state_dict(variant: str, seed: int) -> dict[str, np.ndarray]:
    """HF-layout weights for ``variant``, drawn wide enough that greedy tokens vary."""
    config = T5Config.from_dict(_config_dict(variant))
    model = nnx.eval_shape(lambda: T5ForConditionalGeneration(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    state = {}
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        key, transposed = hf_state_key(path)
        shape = variable.get_value().shape[::-1] if transposed else variable.get_value().shape
        if key.endswith("layer_norm.weight"):
            state[key] = rng.uniform(0.5, 1.5, shape)
        else:
            state[key] = rng.normal(0.0, 2.0 if "relative_attention_bias" in key else 0.3, shape)
    return {key: value.astype(np.float32) for key, value in state.items()}


def _write_checkpoint(directory, config: dict, state: dict[str, np.ndarray]):
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file(state, directory / "model.safetensors")
    return directory


@pytest.fixture(scope="module")
def v11_checkpoint(tmp_path_factory):
    """Directory of a random untied v1.1 checkpoint written without torch."""
    directory = tmp_path_factory.mktemp("v11")
    return _write_checkpoint(directory, _config_dict("v1.1"), _random_state_dict("v1.1", seed=11))


@nnx.jit
def _teacher_forced(model, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask):
    return model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)


def _logits(
    model, decoder_input_ids=DECODER_INPUT_IDS, decoder_attention_mask=DECODER_ATTENTION_MASK
):
    arrays = (INPUT_IDS, ATTENTION_MASK, decoder_input_ids, decoder_attention_mask)
    return np.asarray(_teacher_forced(model, *map(jnp.asarray, arrays)))


def _greedy_without_cache(model) -> np.ndarray:
    """Greedy decoding that re-runs the full teacher-forced model for every new token."""
    config = model.config
    tokens = np.full((INPUT_IDS.shape[0], MAX_NEW_TOKENS + 1), config.pad_token_id)
    tokens[:, 0] = config.decoder_start_token_id
    done = np.zeros(INPUT_IDS.shape[0], bool)
    for step in range(MAX_NEW_TOKENS):
        # causal: the logits at `step` only see tokens[:, : step + 1]
        logits = _logits(model, tokens, np.ones_like(tokens))
        next_token = np.where(done, config.pad_token_id, logits[:, step].argmax(-1))
        tokens[:, step + 1] = next_token
        done |= np.isin(next_token, config.eos_token_id)
        if done.all():
            return tokens[:, : step + 2]
    return tokens


class _Scaled(nnx.Module):
    """Adapter stand-in: wraps a submodule and scales its output."""

    def __init__(self, inner: nnx.Module, factor: float):
        self.inner = inner
        self.factor = factor

    def __call__(self, x):
        return self.inner(x) * self.factor


ADAPTED_PATHS = {
    "encoder.block.1.layer.0.SelfAttention.k": 1.7,
    "decoder.block.0.layer.0.SelfAttention.v": 0.6,
    "decoder.block.1.layer.0.SelfAttention.k": 1.4,
    "decoder.block.1.layer.1.EncDecAttention.k": 1.6,
    "decoder.block.0.layer.1.EncDecAttention.v": 0.5,
    "decoder.block.1.layer.2.DenseReluDense.act": 1.3,
}


def _adapt(model) -> None:
    """Replace the submodules in ADAPTED_PATHS in place by scaling wrappers."""
    paths = module_paths(model)
    for path, factor in ADAPTED_PATHS.items():
        parent_path, name = path.rsplit(".", 1)
        setattr(paths[parent_path], name, _Scaled(paths[path], factor))


# --- without torch --------------------------------------------------------------------------


def test_loaded_parameters_are_hf_weights_in_nnx_layout(v11_checkpoint):
    model = from_pretrained(v11_checkpoint)
    state = load_file(v11_checkpoint / "model.safetensors")
    attention = model.decoder.block[1].layer[1].EncDecAttention
    np.testing.assert_array_equal(
        attention.k.kernel[...], state["decoder.block.1.layer.1.EncDecAttention.k.weight"].T
    )
    np.testing.assert_array_equal(model.shared.embedding[...], state["shared.weight"])
    np.testing.assert_array_equal(model.lm_head.kernel[...], state["lm_head.weight"].T)
    np.testing.assert_array_equal(
        model.encoder.final_layer_norm.weight[...], state["encoder.final_layer_norm.weight"]
    )


def test_module_paths_are_hf_module_names(v11_checkpoint):
    paths = module_paths(from_pretrained(v11_checkpoint))
    for expected in [
        "shared",
        "lm_head",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias",
        "encoder.block.1.layer.0.layer_norm",
        "encoder.block.1.layer.1.DenseReluDense.act",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias",
        "decoder.block.1.layer.1.EncDecAttention.v",
        "decoder.block.1.layer.2.DenseReluDense.wi_1",
        "decoder.final_layer_norm",
    ]:
        assert expected in paths
    assert isinstance(paths["encoder.block.1.layer.0.SelfAttention.q"], nnx.Linear)
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias" not in paths
    assert "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias" not in paths


@pytest.mark.parametrize("adapted", [False, True], ids=["plain", "adapted"])
def test_cached_greedy_equals_uncached_recomputation(v11_checkpoint, adapted):
    model = from_pretrained(v11_checkpoint)
    if adapted:
        plain_logits = _logits(model)
        _adapt(model)
        assert "decoder.block.1.layer.2.DenseReluDense.act.inner" in module_paths(model)
        assert np.abs(_logits(model) - plain_logits).max() > 1e-2  # wrappers are called
    tokens = greedy_generate(model, INPUT_IDS, ATTENTION_MASK, max_new_tokens=MAX_NEW_TOKENS)
    np.testing.assert_array_equal(tokens, _greedy_without_cache(model))
    assert tokens.shape[0] == 3 and tokens.shape[1] <= MAX_NEW_TOKENS + 1
    assert len(np.unique(tokens[:, 1:])) > 3, "degenerate test model: greedy tokens barely vary"


def test_sharded_safetensors_load_like_single_file(v11_checkpoint, tmp_path):
    state = load_file(v11_checkpoint / "model.safetensors")
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    tmp_path.joinpath("config.json").write_text((v11_checkpoint / "config.json").read_text())
    for name, shard_keys in shards.items():
        save_file({key: state[key] for key in shard_keys}, tmp_path / name)
    weight_map = {key: name for name, shard_keys in shards.items() for key in shard_keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _assert_same_parameters(from_pretrained(tmp_path), from_pretrained(v11_checkpoint))


def _assert_same_parameters(model, reference):
    flat = nnx.to_flat_state(nnx.state(model))
    reference_flat = nnx.to_flat_state(nnx.state(reference))
    for (path, value), (reference_path, expected) in zip(flat, reference_flat, strict=True):
        assert path == reference_path
        np.testing.assert_array_equal(
            np.asarray(value.get_value()), np.asarray(expected.get_value())
        )


def test_encoder_only_has_no_decoder(v11_checkpoint):
    encoder = from_pretrained(v11_checkpoint, encoder_only=True)
    assert isinstance(encoder, T5EncoderModel)
    assert not any(path.startswith(("decoder", "lm_head")) for path in module_paths(encoder))
    hidden = encoder(jnp.asarray(INPUT_IDS), jnp.asarray(ATTENTION_MASK))
    assert hidden.shape == (*INPUT_IDS.shape, 32)


def test_bfloat16_load_is_close_to_float32(v11_checkpoint):
    model = from_pretrained(v11_checkpoint, dtype=jnp.bfloat16)
    dtypes = {value.get_value().dtype for _, value in nnx.to_flat_state(nnx.state(model))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    reference = _logits(from_pretrained(v11_checkpoint))
    error = np.abs(_logits(model).astype(np.float32) - reference)
    assert error.mean() <= 0.1 * np.abs(reference).mean()


def test_missing_directory_and_files(v11_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((v11_checkpoint / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained(tmp_path)


def test_torch_bin_without_torch_is_a_clear_error(v11_checkpoint, tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text((v11_checkpoint / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch" else find_spec(name, *a),
    )
    with pytest.raises(CheckpointError, match="pytorch_model.bin needs torch"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_type": "bert"}, "model_type"),
        ({"d_model": None}, "d_model"),
        ({"num_heads": 0}, "num_heads"),
        ({"feed_forward_proj": "fancy-gelu"}, "feed_forward_proj"),
        ({"feed_forward_proj": "gated-nope"}, "feed_forward_proj"),
    ],
)
def test_bad_config_names_the_field(v11_checkpoint, tmp_path, change, field):
    raw = {**json.loads((v11_checkpoint / "config.json").read_text()), **change}
    raw = {key: value for key, value in raw.items() if value is not None}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(T5ConfigError, match=field):
        from_pretrained(tmp_path)


def test_bad_weights_name_the_key(tmp_path):
    config, key = _config_dict("v1.1"), "decoder.block.1.layer.1.EncDecAttention.k.weight"
    state = _random_state_dict("v1.1", seed=0)

    _write_checkpoint(tmp_path / "missing", config, {k: v for k, v in state.items() if k != key})
    with pytest.raises(CheckpointError, match=f"missing weight '{key}'"):
        from_pretrained(tmp_path / "missing")

    _write_checkpoint(tmp_path / "shape", config, {**state, key: np.zeros((32, 16), np.float32)})
    with pytest.raises(
        CheckpointError, match=rf"'{key}': expected shape \(32, 32\), found \(32, 16\)"
    ):
        from_pretrained(tmp_path / "shape")

    extra = {**state, "encoder.block.2.layer.0.layer_norm.weight": np.ones(32, np.float32)}
    _write_checkpoint(tmp_path / "extra", config, extra)
    with pytest.raises(CheckpointError, match="encoder.block.2.layer.0.layer_norm.weight"):
        from_pretrained(tmp_path / "extra")

    copy = {**state, "encoder.embed_tokens.weight": state["shared.weight"] + 1}
    _write_checkpoint(tmp_path / "embeddings", config, copy)
    with pytest.raises(CheckpointError, match="encoder.embed_tokens.weight"):
        from_pretrained(tmp_path / "embeddings")


def test_config_parsing_like_hf():
    base = {"model_type": "t5", "vocab_size": 10, "d_model": 8, "d_kv": 2, "d_ff": 16}
    base |= {"num_layers": 3, "num_heads": 4}
    v10 = T5Config.from_dict(base)
    assert (v10.num_decoder_layers, v10.is_gated_act, v10.dense_act_fn) == (3, False, "relu")
    assert (v10.tie_word_embeddings, v10.scale_decoder_outputs) == (True, True)
    assert v10.decoder_start_token_id == v10.pad_token_id == 0
    v11 = T5Config.from_dict(
        {
            **base,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
            "eos_token_id": [1, 2],
        }
    )
    assert (v11.is_gated_act, v11.dense_act_fn, v11.scale_decoder_outputs) == (
        True,
        "gelu_new",
        False,
    )
    assert v11.eos_token_id == (1, 2)
    assert T5Config.from_dict({**base, "feed_forward_proj": "gated-silu"}).dense_act_fn == "silu"
    assert T5Config.from_dict({**base, "feed_forward_proj": "gelu"}).dense_act_fn == "gelu"


# --- against HuggingFace torch T5 -----------------------------------------------------------


@pytest.fixture(scope="module", params=list(VARIANTS))
def hf_variant(request, tmp_path_factory):
    """(HF torch model, its save_pretrained directory, the NNX model loaded from it)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    feed_forward_proj, tie, scale = VARIANTS[request.param]
    config = transformers.T5Config(**TINY, feed_forward_proj=feed_forward_proj, dropout_rate=0.0)
    config.tie_word_embeddings = tie  # HF >= 5 forces True in T5Config.__init__
    config.scale_decoder_outputs = scale
    hf_model = transformers.T5ForConditionalGeneration(config).eval()
    state = _random_state_dict(request.param, seed=len(request.param))
    shared = state["shared.weight"]
    copies = {"encoder.embed_tokens.weight": shared, "decoder.embed_tokens.weight": shared}
    state = {"lm_head.weight": shared, **copies, **state}  # the tied ones are aliases in torch
    hf_model.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()})
    directory = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(directory)
    return hf_model, directory, from_pretrained(directory)


def _torch_inputs(*arrays):
    import torch

    return [torch.from_numpy(np.asarray(array, np.int64)) for array in arrays]


def test_teacher_forced_logits_match_hf(hf_variant):
    import torch

    hf_model, _, model = hf_variant
    assert model.config.tie_word_embeddings == hf_model.config.tie_word_embeddings
    assert model.config.scale_decoder_outputs == hf_model.config.scale_decoder_outputs
    arrays = _torch_inputs(INPUT_IDS, ATTENTION_MASK, DECODER_INPUT_IDS, DECODER_ATTENTION_MASK)
    with torch.no_grad():
        expected = hf_model(
            *arrays[:2], decoder_input_ids=arrays[2], decoder_attention_mask=arrays[3]
        )
    logits = _logits(model)
    assert logits.shape == (*DECODER_INPUT_IDS.shape, 100)
    np.testing.assert_allclose(logits, expected.logits.numpy(), atol=1e-4, rtol=0)


def test_greedy_generate_matches_hf_generate(hf_variant):
    import torch

    hf_model, _, model = hf_variant
    input_ids, attention_mask = _torch_inputs(INPUT_IDS, ATTENTION_MASK)
    with torch.no_grad():
        expected = hf_model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            num_beams=1,
        )
    tokens = greedy_generate(model, INPUT_IDS, ATTENTION_MASK, max_new_tokens=MAX_NEW_TOKENS)
    np.testing.assert_array_equal(tokens, expected.numpy())


def test_module_paths_match_hf_named_modules(hf_variant):
    import torch

    hf_model, _, model = hf_variant
    paths = set(module_paths(model))
    hf_modules = dict(hf_model.named_modules())
    assert paths <= set(hf_modules)
    norm_type = type(hf_modules["encoder.final_layer_norm"])
    with_weights = (torch.nn.Linear, torch.nn.Embedding, norm_type)
    hf_weighted = {name for name, module in hf_modules.items() if isinstance(module, with_weights)}
    hf_weighted -= {"encoder.embed_tokens", "decoder.embed_tokens"}
    if model.config.tie_word_embeddings:
        hf_weighted.discard("lm_head")
    assert hf_weighted <= paths


def test_encoder_only_matches_hf_encoder(hf_variant):
    import torch

    hf_model, directory, _ = hf_variant
    encoder = from_pretrained(directory, encoder_only=True)
    input_ids, attention_mask = _torch_inputs(INPUT_IDS, ATTENTION_MASK)
    with torch.no_grad():
        expected = hf_model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
    hidden = encoder(jnp.asarray(INPUT_IDS), jnp.asarray(ATTENTION_MASK))
    np.testing.assert_allclose(np.asarray(hidden), expected.last_hidden_state.numpy(), atol=1e-4)


def test_torch_bin_loads_like_safetensors(hf_variant, tmp_path):
    import torch

    hf_model, directory, model = hf_variant
    tmp_path.joinpath("config.json").write_text((directory / "config.json").read_text())
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    _assert_same_parameters(from_pretrained(tmp_path), model)
