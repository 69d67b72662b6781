"""PEFT import and export, the catalogue of bad inputs without a framework: every malformed
or unrepresentable PEFT directory is one ``AdapterFileError`` (or ``ValueError``) naming the
file and the problem and saying what to do, raised before the model is touched; bf16, f16 and
f64 weights import; and an export PEFT could not load with the same outputs is refused
before anything is written."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

import mixlight as ml
import mixlight.extend as mlx
from mixlight._safetensors_floats import read_float32
from tests.core.dict_backend import dict_backend, t5_like
from tests.core.test_reliability_catalogue import Case, check_case

K = "base_model.model.encoder.block.0.layer.0.SelfAttention.k"
WO = "base_model.model.encoder.block.0.layer.1.DenseReluDense.wo"
WEIGHTS = r"adapter_model\.safetensors"
CONFIG = r"adapter_config\.json"
RECOPY = "copy the adapter directory again"
RESAVE = r"re-save it with PeftModel\.save_pretrained"


@pytest.fixture(autouse=True)
def _dict_backend():
    with dict_backend():
        yield


def ia3() -> dict[str, np.ndarray]:
    return {f"{K}.ia3_l": np.ones((8, 1), np.float32)}


def lora(rank: int = 2) -> dict[str, np.ndarray]:
    return {
        f"{K}.lora_A.weight": np.full((rank, 8), 0.5, np.float32),
        f"{K}.lora_B.weight": np.full((8, rank), 0.25, np.float32),
    }


def peft_dir(
    config: Any = None,
    tensors: dict[str, np.ndarray] | None = None,
    *,
    config_bytes: bytes | None = None,
    weights_bytes: bytes | None = None,
) -> Callable[[Path], Path]:
    """A maker of a PEFT directory under ``tmp``: ``config`` as JSON (or raw bytes), the
    tensors as safetensors (or raw bytes)."""

    def make(tmp: Path) -> Path:
        out = tmp / "peft"
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(config).encode() if config_bytes is None else config_bytes
        (out / "adapter_config.json").write_bytes(text)
        data = save(tensors if tensors is not None else ia3())
        (out / "adapter_model.safetensors").write_bytes(
            data if weights_bytes is None else weights_bytes
        )
        return out

    return make


def safetensors_bytes(header: Any, body: bytes = b"") -> bytes:
    """A safetensors file of this (possibly malformed) header and data section."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def ia3_entry(dtype: str = "F32", shape=(8, 1), offsets=(0, 32)) -> dict[str, Any]:
    return {f"{K}.ia3_l": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}


IA3 = {"peft_type": "IA3"}
LORA = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}


def lora_with(**fields: Any) -> dict[str, Any]:
    return dict(LORA, **fields)


# name, directory, problem, fix
BAD_DIRECTORIES: list[tuple[str, Callable[[Path], Path], str, str]] = [
    (
        "NaN weights",
        peft_dir(IA3, {f"{K}.ia3_l": np.full((8, 1), np.nan, np.float32)}),
        rf"{WEIGHTS}: non-finite values \(NaN/inf\) in {K}\.ia3_l",
        "diverged run.*earlier checkpoint",
    ),
    (
        "inf LoRA weights",
        peft_dir(LORA, {**lora(), f"{K}.lora_B.weight": np.full((8, 2), np.inf, np.float32)}),
        rf"{WEIGHTS}: non-finite values \(NaN/inf\) in {K}\.lora_B\.weight",
        "diverged run.*earlier checkpoint",
    ),
    (
        "lora_alpha null",
        peft_dir(lora_with(lora_alpha=None), lora()),
        rf"{CONFIG}: lora_alpha=None is not a finite number",
        r"the LoRA alpha the adapter was trained with \(PEFT's default is 8\)",
    ),
    (
        "lora_alpha a string",
        peft_dir(lora_with(lora_alpha="16"), lora()),
        r"lora_alpha='16' is not a finite number",
        "trained with",
    ),
    (
        "lora_alpha true",
        peft_dir(lora_with(lora_alpha=True), lora()),
        r"lora_alpha=True is not a finite number",
        "trained with",
    ),
    (
        "lora_alpha NaN",
        peft_dir(config_bytes=b'{"peft_type": "LORA", "lora_alpha": NaN}', tensors=lora()),
        r"lora_alpha=nan is not a finite number",
        "trained with",
    ),
    (
        "lora_alpha too large for a float",
        peft_dir(lora_with(lora_alpha=10**400), lora()),
        r"lora_alpha=1000.* is not a finite number",
        "trained with",
    ),
    (
        "alpha_pattern a list",
        peft_dir(lora_with(alpha_pattern=[16]), lora()),
        r"alpha_pattern is a list \(\[16\]\), not a JSON object",
        r"write it as PEFT does \(e\.g\. \{\"q\": 16\}\), or remove it",
    ),
    (
        "rank_pattern a list",
        peft_dir(lora_with(rank_pattern=["k", 2]), lora()),
        r"rank_pattern is a list .*not a JSON object",
        "write it as PEFT does",
    ),
    (
        "alpha_pattern value a string",
        peft_dir(lora_with(alpha_pattern={"k": "x"}), lora()),
        r"alpha_pattern\['k'\]='x' is not a finite number",
        "trained with",
    ),
    (
        "rank_pattern value a string",
        peft_dir(lora_with(rank_pattern={"k": "2"}), lora()),
        r"rank_pattern\['k'\]='2' is not a positive integer",
        r"rank the adapter was trained with \(2 for encoder",
    ),
    (
        "r disagreeing with the weights",
        peft_dir(lora_with(r=8), lora(2)),
        r"r=8 for encoder\.block\.0\.layer\.0\.SelfAttention\.k, but its lora_A\.weight has rank 2",
        "set r to 2 if the weights are right",
    ),
    (
        "invalid regex in target_modules",
        peft_dir(dict(IA3, target_modules=".*(k|v"), ia3()),
        rf"{CONFIG}: target_modules entry '\.\*\(k\|v' is not a valid regular expression",
        "correct or remove it",
    ),
    (
        "invalid regex in alpha_pattern",
        peft_dir(lora_with(alpha_pattern={"[q": 4}), lora()),
        r"alpha_pattern entry '\[q' is not a valid regular expression",
        "correct or remove it",
    ),
    (
        "invalid regex in feedforward_modules",
        peft_dir(dict(IA3, feedforward_modules="wo)"), ia3()),
        r"feedforward_modules entry 'wo\)' is not a valid regular expression",
        "correct or remove it",
    ),
    (
        "feedforward_modules that backtracks",
        peft_dir(dict(IA3, feedforward_modules="(a|a)+wo"), ia3()),
        r"feedforward_modules '\(a\|a\)\+wo' in .*alternation inside a repetition",
        "rewrite it",
    ),
    (
        "alpha_pattern key that nests repeats",
        peft_dir(lora_with(alpha_pattern={"(q+)+": 4}), lora()),
        r"alpha_pattern .*repetition inside a repetition",
        "rewrite it",
    ),
    (
        "feedforward_modules a number",
        peft_dir(dict(IA3, feedforward_modules=3), ia3()),
        r"feedforward_modules=3 is neither a regular expression nor a list of module names",
        "write it as PEFT does",
    ),
    (
        "target_modules a list of numbers",
        peft_dir(dict(IA3, target_modules=[1, 2]), ia3()),
        r"target_modules=\[1, 2\] is neither",
        "write it as PEFT does",
    ),
    (
        "a scalar (IA)³ tensor",
        peft_dir(IA3, {f"{K}.ia3_l": np.array(1.0, np.float32)}),
        rf"{K}\.ia3_l has shape \(\)",
        f"feedforward_modules in adapter_config.json, or {RECOPY}",
    ),
    (
        "a scalar LoRA tensor",
        peft_dir(LORA, {**lora(), f"{K}.lora_A.weight": np.array(1.0, np.float32)}),
        r"lora_A\.weight \(\) and lora_B\.weight \(8, 2\) are not a linear layer's",
        "mixlight imports LoRA of linear layers only",
    ),
    (
        "a rank-0 LoRA",
        peft_dir({"peft_type": "LORA"}, lora(0)),
        r"lora_A\.weight \(0, 8\) has rank 0",
        RECOPY,
    ),
    (
        "lora_B missing",
        peft_dir(LORA, {f"{K}.lora_A.weight": np.ones((2, 8), np.float32)}),
        r"k\.lora_B\.weight is missing",
        RECOPY,
    ),
    (
        "__metadata__ a list",
        peft_dir(
            IA3, weights_bytes=safetensors_bytes({"__metadata__": [1], **ia3_entry()}, bytes(32))
        ),
        rf"{WEIGHTS}: its safetensors __metadata__ is list \[1\], not a map of strings",
        RECOPY,
    ),
    (
        "__metadata__ with a number",
        peft_dir(
            IA3,
            weights_bytes=safetensors_bytes(
                {"__metadata__": {"format": 1}, **ia3_entry()}, bytes(32)
            ),
        ),
        r"__metadata__ is dict \{'format': 1\}, not a map of strings to strings",
        RECOPY,
    ),
    (
        "an integer tensor",
        peft_dir(IA3, {f"{K}.ia3_l": np.ones((8, 1), np.int32)}),
        rf"tensor '{K}\.ia3_l' has dtype I32; adapter weights are floating point",
        "convert the tensor to float32 and save it again",
    ),
    (
        "a malformed header entry",
        peft_dir(IA3, weights_bytes=safetensors_bytes({f"{K}.ia3_l": {"dtype": "F32"}})),
        rf"the header entry of tensor '{K}\.ia3_l' is .*, not \{{'dtype'",
        RECOPY,
    ),
    (
        "offsets that do not fit the shape",
        peft_dir(IA3, weights_bytes=safetensors_bytes(ia3_entry(offsets=(0, 16)), bytes(16))),
        r"of shape \(8, 1\) and dtype F32 needs 32 bytes, its data_offsets \[0, 16\] hold 16",
        RECOPY,
    ),
    (
        "overlapping tensors",
        peft_dir(
            IA3,
            weights_bytes=safetensors_bytes(
                {**ia3_entry(), "base_model.model.x.ia3_l": ia3_entry()[f"{K}.ia3_l"]}, bytes(32)
            ),
        ),
        r"tensors overlap or leave a gap",
        RECOPY,
    ),
    (
        "bytes after the last tensor",
        peft_dir(IA3, weights_bytes=safetensors_bytes(ia3_entry(), bytes(40))),
        r"8 bytes after the last tensor belong to no tensor",
        RECOPY,
    ),
    (
        "a truncated weights file",
        peft_dir(IA3, weights_bytes=save(ia3())[:-10]),
        rf"{WEIGHTS} is truncated: its tensors need 32 bytes of data, the file holds 22",
        RECOPY,
    ),
    (
        "random bytes as the weights file",
        peft_dir(IA3, weights_bytes=np.random.default_rng(0).bytes(300)),
        rf"{WEIGHTS} is truncated or not a safetensors file",
        RECOPY,
    ),
    (
        "an empty weights file",
        peft_dir(IA3, weights_bytes=b""),
        rf"{WEIGHTS} is not a safetensors file: it holds 0 bytes",
        RECOPY,
    ),
    (
        "a safetensors header that is not JSON",
        peft_dir(IA3, weights_bytes=struct.pack("<Q", 4) + b"\xff\xfe{]"),
        r"is not a safetensors file: its header is not a JSON object",
        RECOPY,
    ),
    (
        "deeply nested adapter_config.json",
        peft_dir(
            config_bytes=b'{"peft_type": "IA3", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        ),
        rf"{CONFIG} nests JSON arrays or objects too deeply to read",
        RESAVE,
    ),
    (
        "adapter_config.json not UTF-8",
        peft_dir(config_bytes=b'{"peft_type": "\xff"}'),
        rf"{CONFIG} is not UTF-8 text \(invalid start byte at byte 15\)",
        RESAVE,
    ),
    (
        "adapter_config.json not JSON",
        peft_dir(config_bytes=b"peft_type: IA3"),
        rf"{CONFIG} is not valid JSON",
        RESAVE,
    ),
    (
        "adapter_config.json an array",
        peft_dir(["IA3"]),
        rf"{CONFIG} holds a JSON list, not an object: not a PEFT adapter config",
        RESAVE,
    ),
    (
        "no peft_type",
        peft_dir({"r": 8, "target_modules": ["q"]}),
        rf"{CONFIG} has no peft_type: not a PEFT adapter config",
        "point at the directory PeftModel.save_pretrained wrote",
    ),
    (
        "peft_type not a string",
        peft_dir({"peft_type": ["IA3"]}),
        r"peft_type \['IA3'\] is not a string",
        RESAVE,
    ),
    (
        "an unknown peft_type",
        peft_dir({"peft_type": "VERA"}),
        r"peft_type 'VERA' has no mixlight counterpart",
        "mixlight imports IA3 and LORA adapters",
    ),
    (
        "bias null",
        peft_dir(lora_with(bias=None), lora()),
        r"bias=None; PEFT trains base-model biases unless bias='none'",
        "retrain with bias='none'",
    ),
    (
        "an empty module path",
        peft_dir(IA3, {"base_model.model..ia3_l": np.ones((8, 1), np.float32)}),
        r"key 'base_model\.model\.\.ia3_l' is not of the form",
        RESAVE,
    ),
    (
        "two (IA)³ keys for one site",
        peft_dir(
            dict(IA3, feedforward_modules=["wo"]),
            {
                f"{WO}.ia3_l": np.ones((1, 16), np.float32),
                "base_model.model.encoder.block.0.layer.1.DenseReluDense.act.ia3_l": np.ones(
                    (16, 1), np.float32
                ),
            },
        ),
        rf"DenseReluDense\.act\.ia3_l and {WO}\.ia3_l both scale .*DenseReluDense\.act's output",
        "remove the hand-added one",
    ),
    (
        "a directory that does not exist",
        lambda tmp: tmp / "nowhere",
        r"PEFT adapter directory .*nowhere does not exist",
        "pass the directory PeftModel.save_pretrained wrote",
    ),
    (
        "the weights file instead of its directory",
        lambda tmp: peft_dir(IA3)(tmp) / "adapter_model.safetensors",
        r"adapter_model\.safetensors is a file, not a PEFT adapter directory",
        r"pass its directory .*peft",
    ),
]
CASES = [
    Case(
        name,
        lambda tmp, make=make: ml.load_peft_adapter(t5_like(), make(tmp)),
        ml.AdapterFileError,
        problem,
        fix,
    )
    for name, make, problem, fix in BAD_DIRECTORIES
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_peft_directory_gets_a_clear_error(case, tmp_path):
    check_case(case, tmp_path)


@pytest.mark.parametrize(
    "make", [m for _, m, _, _ in BAD_DIRECTORIES], ids=[n for n, *_ in BAD_DIRECTORIES]
)
def test_a_bad_peft_directory_leaves_the_model_untouched(make, tmp_path):
    model = t5_like()
    with pytest.raises(ml.AdapterFileError):
        ml.load_peft_adapter(model, make(tmp_path))
    assert model.state is None


def test_the_errors_are_one_line(tmp_path):
    for name, make, _, _ in BAD_DIRECTORIES:
        with pytest.raises(ml.AdapterFileError) as info:
            ml.load_peft_adapter(t5_like(), make(tmp_path / name.replace(" ", "-")))
        assert "\n" not in str(info.value), name


# --- a weight that does not fit the model: refused after injection, then undone -----------


def test_a_weight_of_the_wrong_shape_is_refused_and_the_model_left_as_it_was(tmp_path):
    wrong = peft_dir(IA3, {f"{K}.ia3_l": np.ones((5, 1), np.float32)})(tmp_path / "wrong")
    model = t5_like()
    with pytest.raises(
        ml.AdapterFileError,
        match=r"SelfAttention\.k: its vectors has shape \(5,\), the model's .* needs \(8,\); "
        "the PEFT adapter was trained on another base model",
    ):
        ml.load_peft_adapter(model, wrong)
    assert model.state is None
    right = peft_dir(IA3, {f"{K}.ia3_l": np.full((8, 1), 2.0, np.float32)})(tmp_path / "right")
    ml.load_peft_adapter(model, right)  # the next, correct load is not refused
    _, _, arrays = mlx.load_backend("dict").adapter_state(model)
    np.testing.assert_array_equal(arrays["encoder.block.0.layer.0.SelfAttention.k.vectors"], 2.0)


# --- what imports -------------------------------------------------------------------------


def bf16_bytes(values: np.ndarray) -> bytes:
    """float32 ``values`` (exact in bfloat16) as a BF16 safetensors file, as torch writes it."""
    high = (np.ascontiguousarray(values, "<f4").view("<u4") >> 16).astype("<u2")
    assert np.array_equal((high.astype(np.uint32) << 16).view(np.float32), values)
    header = ia3_entry("BF16", values.shape, (0, high.nbytes))
    return safetensors_bytes(header, high.tobytes())


def test_a_bf16_peft_adapter_imports_exactly(tmp_path):
    values = np.array([1.0, -2.5, 0.0078125, 3.0e38, -1.5, 0.5, 7.0, 1.0e-30], np.float32)
    values = (values.view(np.uint32) & 0xFFFF0000).view(np.float32).reshape(8, 1)
    directory = peft_dir(IA3, weights_bytes=bf16_bytes(values))(tmp_path)
    model = ml.load_peft_adapter(t5_like(), directory)
    _, _, arrays = mlx.load_backend("dict").adapter_state(model)
    got = arrays["encoder.block.0.layer.0.SelfAttention.k.vectors"][0]
    np.testing.assert_array_equal(got, values[:, 0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_f16_f32_and_f64_peft_adapters_import(tmp_path, dtype):
    values = np.linspace(-2, 2, 8).astype(dtype).reshape(8, 1)
    model = ml.load_peft_adapter(t5_like(), peft_dir(IA3, {f"{K}.ia3_l": values})(tmp_path))
    _, _, arrays = mlx.load_backend("dict").adapter_state(model)
    got = arrays["encoder.block.0.layer.0.SelfAttention.k.vectors"][0]
    np.testing.assert_array_equal(got, values[:, 0].astype(np.float32))


@pytest.mark.parametrize(
    "tensors",
    [
        {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(2.5)},
        {"empty": np.zeros((0, 4), np.float16), "c": np.ones((3,), np.float32)},
        {},
    ],
    ids=["two", "zero-size", "none"],
)
def test_the_reader_agrees_with_safetensors(tmp_path, tensors):
    got = read_float32(save(tensors, metadata={"format": "pt"}), tmp_path / "x", "fix")
    assert got.keys() == tensors.keys()
    for name, value in tensors.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], np.asarray(value, np.float32))


@pytest.mark.parametrize("alpha", [-4, 0])
def test_a_negative_or_zero_lora_alpha_imports_exactly(tmp_path, alpha):
    """PEFT scales the LoRA by alpha / r whatever its sign; mixlight's expert scale is
    positive, so the sign (or the zero) goes into lora_B."""
    tensors = lora(2)
    directory = peft_dir(lora_with(lora_alpha=alpha), tensors)(tmp_path)
    model = ml.load_peft_adapter(t5_like(), directory)
    _, specs, arrays = mlx.load_backend("dict").adapter_state(model)
    path = "encoder.block.0.layer.0.SelfAttention.k"
    (spec,) = [s for s in specs if s.path == path]
    ours = spec.expert.scale * arrays[f"{path}.lora_A"][0] @ arrays[f"{path}.lora_B"][0]
    theirs = alpha / 2 * (tensors[f"{K}.lora_B.weight"] @ tensors[f"{K}.lora_A.weight"]).T
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


# --- export -------------------------------------------------------------------------------


def both_wo_sites() -> ml.AdapterConfig:
    return ml.AdapterConfig(
        [ml.Site(r".*DenseReluDense\.(?:act|wo)", mlx.Vectors())], 1, method="IA3-act-and-wo"
    )


EXPORT_CASES = [
    Case(
        "two sites onto one PEFT (IA)³ vector",
        lambda tmp: ml.save_peft_adapter(ml.inject(t5_like(), both_wo_sites(), seed=0), tmp / "x"),
        ml.AdapterFileError,
        r"sites encoder\.block\.0\.layer\.1\.DenseReluDense\.act and "
        r"encoder\.block\.0\.layer\.1\.DenseReluDense\.wo both export to PEFT's \(IA\)³ "
        r"vector of encoder\.block\.0\.layer\.1\.DenseReluDense\.wo",
        "export an adapter with only one of these sites",
    ),
    Case(
        "LoRA on an activation",
        lambda tmp: ml.save_peft_adapter(
            ml.inject(t5_like(), ml.LoRA(2, targets=[r".*\.act"]), seed=0), tmp / "x"
        ),
        ml.AdapterFileError,
        r"site encoder\.block\.0\.layer\.1\.DenseReluDense\.act adapts an activation's output",
        "target linear layers to export",
    ),
    Case(
        "non-finite adapter values",
        lambda tmp: ml.save_peft_adapter(nan_ia3(), tmp / "x"),
        ml.AdapterFileError,
        r"refusing to save the PEFT adapter: non-finite values \(NaN/inf\) in "
        r"encoder\.block\.0\.layer\.0\.SelfAttention\.k\.vectors",
        "the run diverged.*nothing was written",
    ),
    Case(
        "a task_type PEFT does not know",
        lambda tmp: ml.save_peft_adapter(
            ml.inject(t5_like(), ml.IA3(), seed=0), tmp / "x", task_type="seq2seq"
        ),
        ValueError,
        r"task_type='seq2seq' is not one of PEFT's task types",
        r"pass one of SEQ_CLS, SEQ_2_SEQ_LM, .*or None for a plain PeftModel",
    ),
]


def nan_ia3():
    model = ml.inject(t5_like(), ml.IA3(), seed=0)
    backend = mlx.load_backend("dict")
    _, _, arrays = backend.adapter_state(model)
    arrays["encoder.block.0.layer.0.SelfAttention.k.vectors"][0, 3] = np.nan
    backend.load_adapter_state(model, arrays)
    return model


@pytest.mark.parametrize("case", EXPORT_CASES, ids=[c.name for c in EXPORT_CASES])
def test_an_export_peft_could_not_load_is_refused_before_writing(case, tmp_path):
    check_case(case, tmp_path)
    assert not (tmp_path / "x").exists()
