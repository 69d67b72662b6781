"""The catalogue of bad inputs, backend-neutral part: configs, adapter files and the CLI.

Every case is an input a user can really give. Each must raise the listed error type (or
warning) with a message that names the problem (``problem``) and says what to do (``fix``).
The torch and JAX modules of the same name hold the cases that need a model. Only public API
is used, so the catalogue can be run against an older checkout to count what it gets right.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from safetensors.numpy import save_file

import mixlight as ml
import mixlight.extend as mlx
from mixlight.cli import main as cli


@attrs.frozen
class Case:
    """A bad input: ``action(tmp_path)`` must raise ``error`` (or warn, for a Warning)
    whose message matches ``problem`` and ``fix`` (regexes, case-insensitive)."""

    name: str
    action: Callable[[Path], Any]
    error: type[BaseException]
    problem: str
    fix: str


def check_case(case: Case, tmp_path: Path) -> None:
    if issubclass(case.error, Warning):
        with pytest.warns(case.error) as record:
            case.action(tmp_path)
        message = " | ".join(str(w.message) for w in record if issubclass(w.category, case.error))
    else:
        with pytest.raises(case.error) as info:
            case.action(tmp_path)
        message = str(info.value)
    assert re.search(case.problem, message, re.I | re.S), f"problem not named: {message}"
    assert re.search(case.fix, message, re.I | re.S), f"no fix given: {message}"


# --- adapter directories -----------------------------------------------------------------

CONFIG = ml.MoV(3, targets=[".*k"])
PATHS = ["enc.k", "dec.k"]


def specs_and_arrays(seed: int = 0, config: ml.AdapterConfig = CONFIG):
    specs = mlx.plan_sites(config, {p: mlx.ModuleShape(8, 8) for p in PATHS})
    rng = np.random.default_rng(seed)
    arrays = {s.canonical_name(n): a for s in specs for n, a in s.init_params(rng).items()}
    return specs, arrays


def saved(tmp_path: Path, seed: int = 0) -> Path:
    out = tmp_path / "adapter"
    mlx.write_adapter(out, CONFIG, *specs_and_arrays(seed))
    return out


def corrupt(tmp_path: Path, how: str) -> Path:
    out = saved(tmp_path)
    weights = out / "mixlight_adapter.safetensors"
    data = bytearray(weights.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "bitflip":
        data[-2] ^= 0x10
    elif how == "random":
        data = bytearray(np.random.default_rng(0).bytes(len(data)))
    weights.write_bytes(bytes(data))
    return out


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """The format's hash of its arrays (docs/reliability.md): each name, its shape and its
    little-endian float32 bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name], "<f4")
        digest.update(f"{name}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def metadata_sha256(meta: dict) -> str:
    """The format's hash of its metadata (docs/reliability.md): canonical JSON of every key
    but the hash itself (and the readable copy's weights_sha256)."""
    covered = {k: v for k, v in meta.items() if k not in ("metadata_sha256", "weights_sha256")}
    return hashlib.sha256(json.dumps(covered, sort_keys=True, separators=(",", ":")).encode())


def rewrite_meta(
    directory: Path,
    edit: Callable[[dict], Any] = lambda meta: None,
    rehash: bool = True,
    arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Rewrite a saved adapter's metadata with ``edit`` (and its arrays with ``arrays``);
    ``rehash`` records the matching sha256s, as a deliberate forger (or another tool)
    would."""
    from safetensors.numpy import load, save

    weights = directory / "mixlight_adapter.safetensors"
    data = weights.read_bytes()
    size = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["mixlight.adapter"])
    arrays = load(data) if arrays is None else arrays
    edit(meta)
    if rehash:
        meta["arrays_sha256"] = arrays_sha256(arrays)
        meta["metadata_sha256"] = metadata_sha256(meta).hexdigest()
    weights.write_bytes(save(arrays, metadata={"mixlight.adapter": json.dumps(meta)}))
    return directory


def set_pattern(meta: dict, pattern: str) -> None:
    meta["config"]["sites"][0]["pattern"] = pattern


def flip_alpha(tmp: Path) -> Path:
    """A MoLoRA adapter whose header says alpha 36 where it was saved with 16: one bit
    ('1' 0x31 -> '3' 0x33), in place, the header's length unchanged."""
    out = tmp / "molora"
    config = ml.MoLoRA(2, rank=2, alpha=16, targets=[".*k"])
    mlx.write_adapter(out, config, *specs_and_arrays(config=config))
    weights = out / "mixlight_adapter.safetensors"
    data = weights.read_bytes()
    assert data.count(b'alpha\\": 16') == 1
    weights.write_bytes(data.replace(b'alpha\\": 16', b'alpha\\": 36'))
    return out


def raw_safetensors(tmp: Path, header: bytes) -> Path:
    """An adapter directory whose weights file has this header (and 4 bytes of data)."""
    out = tmp / "raw"
    out.mkdir()
    body = len(header).to_bytes(8, "little") + header + bytes(4)
    (out / "mixlight_adapter.safetensors").write_bytes(body)
    return out


DEEP = "[" * 100_000 + "]" * 100_000
TENSOR = '"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'


def fifo_at(tmp: Path, name: str) -> Path:
    out = saved(tmp)
    (out / name).unlink(missing_ok=True)
    os.mkfifo(out / name)
    return out


def dir_at(tmp: Path, name: str) -> Path:
    out = saved(tmp)
    (out / name).unlink()
    (out / name).mkdir()
    return out


def read(path_of: Callable[[Path], Any]) -> Callable[[Path], Any]:
    return lambda tmp: ml.read_adapter(path_of(tmp))


def write_to(path_of: Callable[[Path], Any], arrays=None) -> Callable[[Path], Any]:
    def action(tmp: Path) -> Any:
        specs, default = specs_and_arrays()
        return mlx.write_adapter(path_of(tmp), CONFIG, specs, default if arrays is None else arrays)

    return action


def a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("hello")
    return tmp / "notes.txt"


def peft_dir(tmp: Path) -> Path:
    """What PEFT's save_pretrained writes for an (IA)³ adapter."""
    (tmp / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "r": 8}))
    save_file(
        {"base_model.model.k.ia3_l": np.ones((8, 1), np.float32)}, tmp / "adapter_model.safetensors"
    )
    return tmp


def random_folder(tmp: Path) -> Path:
    rng = np.random.default_rng(1)
    for name in ("mixlight_adapter.safetensors", "mixlight_config.json"):
        (tmp / name).write_bytes(rng.bytes(300))
    return tmp


def full_disk(tmp: Path) -> Any:
    real_write = os.write

    def short_write(fd, data):
        real_write(fd, bytes(data)[:10])
        raise OSError(28, "No space left on device")

    os.write = short_write
    try:
        return write_to(lambda t: t / "out")(tmp)
    finally:
        os.write = real_write


def no_permission(tmp: Path) -> Any:
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    os.open = refuse
    try:
        return write_to(lambda t: t / "out")(tmp)
    finally:
        os.open = real_open


def plain_safetensors(tmp: Path) -> Path:
    """A safetensors file of the right name and arrays, without mixlight's metadata."""
    tmp.mkdir(exist_ok=True)
    save_file(specs_and_arrays()[1], tmp / "mixlight_adapter.safetensors")
    return tmp


def nan_arrays() -> dict[str, np.ndarray]:
    _, arrays = specs_and_arrays()
    return {n: np.full_like(a, np.nan) if n.endswith("vectors") else a for n, a in arrays.items()}


def mismatched_load(tmp: Path) -> None:
    adapter = ml.read_adapter(saved(tmp))
    other = mlx.plan_sites(CONFIG, {p: mlx.ModuleShape(16, 16) for p in PATHS})
    ml.adapter_file.check_fits(adapter, other, "out/")


FILE_CASES = [
    Case(
        "a flipped bit in the config (alpha 16 -> 36)",
        read(flip_alpha),
        ml.AdapterFileError,
        r"metadata \(config, sites, base model record\) does not match the sha256",
        "save the adapter again",
    ),
    Case(
        "a file without its metadata sha256",
        read(lambda t: rewrite_meta(saved(t), lambda m: m.pop("metadata_sha256"), False)),
        ml.AdapterFileError,
        "does not match the sha256",
        "save the adapter again",
    ),
    Case(
        "site_index naming a site the config lacks",
        read(lambda t: rewrite_meta(saved(t), lambda m: m["site_index"].update({"enc.k": 5}))),
        ml.AdapterFileError,
        "site_index does not give each adapted module one of the config's 1 sites",
        "save the adapter again",
    ),
    *(
        Case(
            f"a recorded module shape with {field}={value!r}",
            read(
                lambda t, f=field, v=value: rewrite_meta(
                    saved(t), lambda m: m["base_model"]["sites"]["enc.k"].update({f: v})
                )
            ),
            ml.AdapterFileError,
            "the recorded shape of enc.k is .*not positive integer widths",
            "save the adapter again",
        )
        for field, value in (("d_in", "8"), ("d_out", -8), ("d_in", 8.0), ("heads", 0))
    ),
    Case(
        "a base-model fingerprint unlike the recorded shapes",
        read(lambda t: rewrite_meta(saved(t), lambda m: m["base_model"].update(fingerprint="0"))),
        ml.AdapterFileError,
        "fingerprint does not match the module shapes it records",
        "save the adapter again",
    ),
    Case(
        "site_index missing a module",
        read(lambda t: rewrite_meta(saved(t), lambda m: m["site_index"].pop("dec.k"))),
        ml.AdapterFileError,
        "site_index does not give each adapted module",
        "save the adapter again",
    ),
    *(
        Case(
            f"format version {version!r}",
            read(lambda t, v=version: rewrite_meta(saved(t), lambda m: m.update(format_version=v))),
            ml.AdapterFileError,
            f"bad format_version {re.escape(repr(version))}",
            "save the adapter again",
        )
        for version in (" 1.0", "1.01", "+1.0", "\u0661.0", "1.0.0", 1.0, "1.0\n")
    ),
    Case(
        "__metadata__ that is a list",
        read(lambda t: raw_safetensors(t, f'{{"__metadata__": ["x"], {TENSOR}}}'.encode())),
        ml.AdapterFileError,
        "__metadata__ is not a JSON object of strings",
        "save the adapter again",
    ),
    Case(
        "__metadata__ holding a number",
        read(lambda t: raw_safetensors(t, f'{{"__metadata__": {{"a": 1}}, {TENSOR}}}'.encode())),
        ml.AdapterFileError,
        "__metadata__ is not a JSON object of strings",
        "save the adapter again",
    ),
    Case(
        "embedded metadata nested 100000 deep",
        read(
            lambda t: raw_safetensors(
                t, json.dumps({"__metadata__": {"mixlight.adapter": DEEP}}).encode()
            )
        ),
        ml.AdapterFileError,
        "embedded metadata is JSON nested too deeply",
        "save the adapter again",
    ),
    Case(
        "a safetensors header nested 100000 deep",
        read(lambda t: raw_safetensors(t, DEEP.encode())),
        ml.AdapterFileError,
        "is not a readable safetensors file",
        "save the adapter again",
    ),
    Case(
        "embedded metadata that is not JSON",
        read(
            lambda t: raw_safetensors(
                t, json.dumps({"__metadata__": {"mixlight.adapter": "{oops"}}).encode()
            )
        ),
        ml.AdapterFileError,
        "embedded metadata is not valid JSON",
        "save the adapter again",
    ),
    Case(
        "save where mixlight_config.json is a directory",
        write_to(lambda t: dir_at(t, "mixlight_config.json")),
        ml.AdapterFileError,
        "mixlight_config.json is a directory",
        "remove it or save to another directory",
    ),
    Case(
        "save where mixlight_config.json is a FIFO",
        write_to(lambda t: fifo_at(t, "mixlight_config.json")),
        ml.AdapterFileError,
        "mixlight_config.json is a FIFO",
        "remove it or save to another directory",
    ),
    Case(
        "save where the weights file is a FIFO",
        write_to(lambda t: fifo_at(t, "mixlight_adapter.safetensors")),
        ml.AdapterFileError,
        "mixlight_adapter.safetensors is a FIFO",
        "remove it or save to another directory",
    ),
    Case(
        "read a missing directory",
        read(lambda t: t / "nowhere"),
        ml.AdapterFileError,
        "nowhere does not exist",
        "pass the directory",
    ),
    Case(
        "read a regular file",
        read(a_file),
        ml.AdapterFileError,
        r"notes\.txt is a file, not an adapter directory",
        "pass the directory",
    ),
    Case(
        "read the weights file itself",
        read(lambda t: saved(t) / "mixlight_adapter.safetensors"),
        ml.AdapterFileError,
        "is a file, not an adapter directory",
        "pass its directory",
    ),
    Case("read path None", read(lambda t: None), TypeError, "got NoneType", "str or os.PathLike"),
    Case("read path 123", read(lambda t: 123), TypeError, "got int 123", "str or os.PathLike"),
    Case("read path ''", read(lambda t: ""), ValueError, "empty string", r"'\.'"),
    Case("save to path ''", write_to(lambda t: ""), ValueError, "empty string", r"'\.'"),
    Case(
        "save to path None",
        write_to(lambda t: None),
        TypeError,
        "got NoneType",
        "str or os.PathLike",
    ),
    Case(
        "save onto a regular file",
        write_to(a_file),
        ml.AdapterFileError,
        "exists and is not a directory",
        "choose another path",
    ),
    Case(
        "read an empty directory",
        read(lambda t: t),
        ml.AdapterFileError,
        r"mixlight_adapter\.safetensors is missing",
        "point at the directory save_adapter wrote",
    ),
    Case(
        "read a folder of random bytes",
        read(random_folder),
        ml.AdapterFileError,
        r"mixlight_adapter\.safetensors is not a readable safetensors file",
        "save the adapter again",
    ),
    Case(
        "read truncated weights",
        read(lambda t: corrupt(t, "truncate")),
        ml.AdapterFileError,
        "truncated",
        "save the adapter again",
    ),
    Case(
        "read weights with a flipped bit",
        read(lambda t: corrupt(t, "bitflip")),
        ml.AdapterFileError,
        r"(do|does) not match the (sha256|checksum)",
        "save the adapter again",
    ),
    Case(
        "read weights overwritten with random bytes",
        read(lambda t: corrupt(t, "random")),
        ml.AdapterFileError,
        "not a readable safetensors file|does not match the checksum",
        "save the adapter again",
    ),
    Case(
        "metadata without base_model",
        read(lambda t: rewrite_meta(saved(t), lambda m: m.pop("base_model"))),
        ml.AdapterFileError,
        "lacks or garbles the entry 'base_model'",
        "save the adapter again",
    ),
    Case(
        "metadata without config",
        read(lambda t: rewrite_meta(saved(t), lambda m: m.pop("config"))),
        ml.AdapterFileError,
        "lacks or garbles the entry 'config'",
        "save the adapter again",
    ),
    Case(
        "a safetensors file without mixlight's metadata",
        read(plain_safetensors),
        ml.AdapterFileError,
        "mixlight_adapter.safetensors carries no mixlight metadata",
        "save the adapter again",
    ),
    Case(
        "arrays replaced by others",
        read(lambda t: rewrite_meta(saved(t), rehash=False, arrays=specs_and_arrays(1)[1])),
        ml.AdapterFileError,
        "arrays do not match the sha256",
        "save the adapter again",
    ),
    Case(
        "format version 2.1 (mixlight before 1.0)",
        read(lambda t: rewrite_meta(saved(t), lambda m: m.update(format_version="2.1"))),
        ml.AdapterFileError,
        r"adapter format 2\.1 \(written by mixlight .*\) is not readable by this mixlight "
        r".*, which reads format 1\.x",
        "save the adapter again with this one",
    ),
    Case(
        "format version 'x'",
        read(lambda t: rewrite_meta(saved(t), lambda m: m.update(format_version="x"))),
        ml.AdapterFileError,
        "bad format_version 'x'",
        "save the adapter again",
    ),
    Case(
        "a PEFT adapter directory",
        read(peft_dir),
        ml.AdapterFileError,
        r"is a PEFT adapter directory \(adapter_config\.json with peft_type 'IA3'\)",
        r"mixlight\.load_peft_adapter\(model, ",
    ),
    Case(
        "another format's name",
        read(lambda t: rewrite_meta(saved(t), lambda m: m.update(format="peft"))),
        ml.AdapterFileError,
        "is not a mixlight adapter",
        r"format != 'mixlight\.adapter'",
    ),
    Case(
        "a config of an unknown expert kind",
        read(
            lambda t: rewrite_meta(
                saved(t), lambda m: m["config"]["sites"][0]["expert"].update(kind="xx")
            )
        ),
        ml.AdapterFileError,
        "unknown expert kind 'xx'",
        "register",
    ),
    Case(
        "a file holding NaN weights",
        read(lambda t: rewrite_meta(saved(t), arrays=nan_arrays())),
        ml.AdapterFileError,
        r"non-finite values \(NaN/inf\) in .*enc\.k\.vectors",
        "retrain",
    ),
    Case(
        "save NaN weights",
        write_to(lambda t: t / "out", nan_arrays()),
        ml.AdapterFileError,
        r"non-finite values \(NaN/inf\) in .*enc\.k\.vectors",
        "lower the learning rate",
    ),
    Case(
        "save with an array missing",
        write_to(lambda t: t / "out", {"enc.k.router": np.zeros((8, 3), np.float32)}),
        ml.AdapterFileError,
        r"missing enc\.k\.vectors \(3, 8\)",
        "does not match its config",
    ),
    Case(
        "save an array of the wrong shape",
        write_to(
            lambda t: t / "out",
            {**specs_and_arrays()[1], "enc.k.vectors": np.ones((3, 9), np.float32)},
        ),
        ml.AdapterFileError,
        r"enc\.k\.vectors: shape \(3, 9\), expected \(3, 8\)",
        "does not match its config",
    ),
    Case("save onto a full disk", full_disk, OSError, "no space left", "free some space"),
    Case(
        "save without write permission",
        no_permission,
        PermissionError,
        "permission denied",
        "directory you can write to",
    ),
    Case(
        "an adapter for a model of other shapes",
        mismatched_load,
        ml.AdapterFileError,
        r"different base model .*enc\.k: adapter has",
        "model it was trained on",
    ),
]

# --- configs -------------------------------------------------------------------------------


def from_dict(change: Callable[[dict], Any]) -> Callable[[Path], Any]:
    def action(tmp: Path) -> Any:
        data = CONFIG.to_dict()
        change(data)
        return ml.AdapterConfig.from_dict(data)

    return action


CONFIG_CASES = [
    Case("MoV(0)", lambda t: ml.MoV(0), ValueError, "num_experts=0", "integer >= 1"),
    Case("MoV(2.5)", lambda t: ml.MoV(2.5), ValueError, "num_experts=2.5", "integer >= 1"),
    Case("TopK(0)", lambda t: ml.TopK(0), ValueError, r"TopK\.k=0", "integer >= 1"),
    Case(
        "TopK(3) of 2 experts",
        lambda t: ml.MoV(2, router=ml.TopK(3)),
        ValueError,
        "exceeds",
        "between 1 and num_experts",
    ),
    Case(
        "z_loss_weight=inf",
        lambda t: ml.SoftMerge(z_loss_weight=float("inf")),
        ValueError,
        "z_loss_weight=inf",
        "finite number >= 0",
    ),
    Case(
        "load_balance_weight=nan",
        lambda t: ml.TopK(2, load_balance_weight=float("nan")),
        ValueError,
        "load_balance_weight=nan",
        "finite number >= 0",
    ),
    Case(
        "load_balance_weight=-1",
        lambda t: ml.SoftMerge(load_balance_weight=-1),
        ValueError,
        "load_balance_weight=-1",
        ">= 0",
    ),
    Case("LoRA rank 0", lambda t: ml.LoRA(rank=0), ValueError, "rank=0", "integer >= 1"),
    Case("MoLoRA alpha=-1", lambda t: ml.MoLoRA(3, 2, alpha=-1), ValueError, "alpha=-1", "> 0"),
    Case(
        "a site pattern that is not a regex",
        lambda t: ml.Site("(", mlx.Vectors()),
        ValueError,
        "not a valid regular expression",
        "Site.pattern",
    ),
    Case(
        "an empty site pattern",
        lambda t: ml.Site("", mlx.Vectors()),
        ValueError,
        "Site.pattern=''",
        "non-empty regular expression",
    ),
    Case(
        "an expert given as a string",
        lambda t: ml.Site("a", "vectors"),
        ValueError,
        "Site.expert='vectors'",
        r"mixlight\.extend\.Vectors\(\)",
    ),
    Case(
        "router_input='middle'",
        lambda t: ml.Site("a", mlx.Vectors(), router_input="middle"),
        ValueError,
        "router_input='middle'",
        "allowed values",
    ),
    Case(
        "heads=0",
        lambda t: ml.Site("a", mlx.Vectors(), heads=0),
        ValueError,
        "heads=0",
        "integer >= 1",
    ),
    Case(
        "per-head low-rank experts",
        lambda t: ml.Site("a", mlx.LowRank(2), heads=2),
        ValueError,
        "does not support per-head routing",
        "heads=None",
    ),
    Case(
        "no sites",
        lambda t: ml.AdapterConfig([], 2),
        ValueError,
        r"sites=\(\)",
        "non-empty sequence of mixlight.Site",
    ),
    Case(
        "routing='batch'",
        lambda t: ml.MoV(2, routing="batch"),
        ValueError,
        "routing='batch'",
        "allowed values",
    ),
    Case(
        "router given as a string",
        lambda t: ml.MoV(2, router="topk"),
        ValueError,
        "router='topk'",
        r"mixlight\.TopK\(k\)",
    ),
    Case(
        "TopK(1) renormalised cannot learn",
        lambda t: ml.MoV(4, router=ml.TopK(1)),
        UserWarning,
        "never learns",
        "renormalize=False",
    ),
    Case(
        "config JSON with an unknown key",
        from_dict(lambda d: d.update(jitter=0.1)),
        ValueError,
        r"unknown AdapterConfig keys \['jitter'\]",
        "known keys",
    ),
    Case(
        "config JSON without num_experts",
        from_dict(lambda d: d.pop("num_experts")),
        ValueError,
        r"missing keys \['num_experts'\]",
        "known keys",
    ),
    Case(
        "config JSON with an unknown router",
        from_dict(lambda d: d.update(router={"kind": "x"})),
        ValueError,
        "unknown router kind 'x'",
        "allowed",
    ),
    Case(
        "config JSON with an unknown expert",
        from_dict(lambda d: d["sites"][0]["expert"].update(kind="moe++")),
        ValueError,
        "unknown expert kind 'moe\\+\\+'",
        "register_expert",
    ),
    Case(
        "config JSON whose site is a string",
        from_dict(lambda d: d.update(sites=["a"])),
        ValueError,
        "site must be a JSON object",
        "got str",
    ),
]

# --- the command line ----------------------------------------------------------------------


class CliError(Exception):
    """A non-zero exit of ``mixlight``; the message is its stderr (no traceback allowed)."""


def run_cli(*args_of: Callable[[Path], str]) -> Callable[[Path], Any]:
    def action(tmp: Path) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli([a(tmp) for a in args_of])
            except SystemExit as exit_:
                code = exit_.code
        assert "Traceback" not in err.getvalue()
        if code != 0:
            raise CliError(f"exit {code}: {err.getvalue()}")

    return action


def arg(value: str) -> Callable[[Path], str]:
    return lambda tmp: value


CLI_CASES = [
    Case(
        "inspect a missing directory",
        run_cli(arg("inspect"), lambda t: str(t / "gone")),
        CliError,
        "exit 2: .*gone does not exist",
        "pass the directory",
    ),
    Case(
        "inspect ''", run_cli(arg("inspect"), arg("")), CliError, "exit 2: .*empty string", r"'\.'"
    ),
    Case(
        "inspect a folder of random bytes",
        run_cli(arg("inspect"), lambda t: str(random_folder(t))),
        CliError,
        r"exit 2: .*adapter\.safetensors is not a readable safetensors",
        "save the adapter again",
    ),
    Case(
        "inspect a regular file",
        run_cli(arg("inspect"), lambda t: str(a_file(t))),
        CliError,
        "exit 2: .*is a file, not an adapter directory",
        "pass the directory",
    ),
    Case(
        "inspect a file with keys removed",
        run_cli(
            arg("inspect"), lambda t: str(rewrite_meta(saved(t), lambda m: m.pop("base_model")))
        ),
        CliError,
        "exit 2: .*base_model",
        "save the adapter again",
    ),
    Case(
        "inspect with a stray argument",
        run_cli(arg("inspect"), arg("a"), arg("b")),
        CliError,
        "unrecognised arguments: b",
        "usage: mixlight",
    ),
]

CASES = FILE_CASES + CONFIG_CASES + CLI_CASES


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_clear_error(case, tmp_path):
    check_case(case, tmp_path)


def test_the_catalogue_is_large_and_distinct():
    assert len({c.name for c in CASES}) == len(CASES) >= 50


# --- models: built for each backend by its own catalogue module ---------------------------


@attrs.frozen
class Kit:
    """What the model cases need from a backend's test module.

    ``model(seed, width=8)``: a fresh two-block model with attention ``k``/``v`` (2 heads)
    and an MLP ``wi``/``act``/``wo``; ``bare()``: a lone linear layer; ``poison(model)``: set
    every adapter parameter to NaN; ``other``: the name of another installed backend;
    ``layout(model)``: the model's modules and what trains, to compare before and after.
    """

    name: str
    model: Callable[..., Any]
    bare: Callable[[], Any]
    poison: Callable[[Any], Any]
    other: str
    layout: Callable[[Any], Any]


MOV_KV = ml.AdapterConfig([ml.Site(r".*\.(k|v)", mlx.Vectors(), heads="auto")], 3, method="MoV-3")


def model_cases(kit: Kit) -> list[Case]:
    """The bad inputs that need a model, for one backend."""

    def injected(seed: int = 0, config: ml.AdapterConfig = MOV_KV) -> Any:
        return ml.inject(kit.model(seed), config, seed=seed)

    def saved_from(tmp: Path, config: ml.AdapterConfig = MOV_KV) -> Path:
        return ml.save_adapter(injected(0, config), tmp / "adapter")

    def narrower(tmp: Path) -> Any:
        directory = saved_from(tmp)
        model = kit.model(0)
        ml.inject(model, ml.AdapterConfig([ml.Site(r".*\.(k|v)", mlx.Vectors())], 3))
        return directory, model

    def backtracking(tmp: Path) -> Path:
        return rewrite_meta(saved_from(tmp), lambda m: set_pattern(m, "(a|a)+b"))

    return [
        Case(
            f"{kit.name}: adapter name '__base__'",
            lambda t: ml.inject(kit.model(0), MOV_KV, adapter_name="__base__"),
            ValueError,
            "'__base__' is reserved: adapter_per_example",
            "pick another name",
        ),
        Case(
            f"{kit.name}: load a file whose site pattern backtracks",
            lambda t: ml.load_adapter(kit.model(0), backtracking(t)),
            ml.AdapterFileError,
            r"'\(a\|a\)\+b' .*alternation inside a repetition",
            "rewrite it",
        ),
        Case(
            f"{kit.name}: inject a dict as config",
            lambda t: ml.inject(kit.model(0), {"E": 2}),
            TypeError,
            "got dict",
            r"mixlight\.AdapterConfig",
        ),
        Case(
            f"{kit.name}: a pattern that matches nothing",
            lambda t: ml.inject(kit.model(0), ml.LoRA(2, targets=["nothing"])),
            ValueError,
            "'nothing' matched no module",
            "module paths",
        ),
        Case(
            f"{kit.name}: a bare layer as the whole model",
            lambda t: ml.inject(kit.bare(), ml.LoRA(2, targets=[".*"])),
            TypeError,
            "bare layer",
            "wrap it",
        ),
        Case(
            f"{kit.name}: inject twice",
            lambda t: ml.inject(injected(), MOV_KV),
            ValueError,
            "already carries a mixlight adapter",
            "remove_adapters|delete_adapter",
        ),
        Case(
            f"{kit.name}: low-rank experts on an activation",
            lambda t: ml.inject(kit.model(0), ml.LoRA(2, targets=[r".*\.act"])),
            TypeError,
            r"act of type .*adapts linear modules",
            "narrow the pattern",
        ),
        Case(
            f"{kit.name}: 3 heads on width 8",
            lambda t: ml.inject(
                kit.model(0), ml.AdapterConfig([ml.Site(r".*\.k", mlx.Vectors(), heads=3)], 2)
            ),
            ValueError,
            "width 8 is not divisible by heads=3",
            "heads=None",
        ),
        Case(
            f"{kit.name}: save a model without adapter",
            lambda t: ml.save_adapter(kit.model(0), t / "a"),
            ValueError,
            "has no mixlight adapter",
            r"mixlight\.inject",
        ),
        Case(
            f"{kit.name}: routing_stats without adapter",
            lambda t: ml.routing_stats(kit.model(0)),
            ValueError,
            "has no mixlight adapter",
            r"mixlight\.inject",
        ),
        Case(
            f"{kit.name}: aux_losses without adapter",
            lambda t: ml.aux_losses(kit.model(0)),
            ValueError,
            "has no mixlight adapter",
            r"mixlight\.inject",
        ),
        Case(
            f"{kit.name}: load an adapter of other sites",
            lambda t: ml.load_adapter(injected(0, ml.LoRA(2, targets=[r".*\.wi"])), saved_from(t)),
            ValueError,
            "already carries a different adapter .*: ",
            "load into a fresh model",
        ),
        Case(
            f"{kit.name}: a per-head file into a one-router model",
            lambda t: ml.load_adapter(*reversed(narrower(t))),
            ValueError,
            r"sites: model .*'heads': None.*file .*'heads': 'auto'",
            "load into a fresh model",
        ),
        Case(
            f"{kit.name}: a token-routed file into a sequence-routed model",
            lambda t: ml.load_adapter(
                injected(0, attrs.evolve(MOV_KV, routing="sequence")), saved_from(t)
            ),
            ValueError,
            "routing: model 'sequence', file 'token'",
            "load into a fresh model",
        ),
        Case(
            f"{kit.name}: load an adapter saved for other shapes",
            lambda t: ml.load_adapter(kit.model(0, 16), saved_from(t)),
            ml.AdapterFileError,
            "different base model .*: adapter has",
            "model it was trained on",
        ),
        Case(
            f"{kit.name}: an adapter trained on another checkpoint",
            lambda t: ml.load_adapter(kit.model(7), saved_from(t)),
            UserWarning,
            "different base model of the same shape",
            "load that checkpoint",
        ),
        Case(
            f"{kit.name}: save a diverged adapter",
            lambda t: ml.save_adapter(kit.poison(injected()), t / "a"),
            ml.AdapterFileError,
            r"non-finite values \(NaN/inf\)",
            "lower the learning rate",
        ),
        Case(
            f"{kit.name}: the backend of another framework",
            lambda t: ml.inject(kit.model(0), MOV_KV, backend=kit.other),
            TypeError,
            f"backend '{kit.other}' .*cannot handle",
            "drop that choice",
        ),
        Case(
            f"{kit.name}: an unknown backend",
            lambda t: ml.inject(kit.model(0), MOV_KV, backend="mlx"),
            ValueError,
            "unknown mixlight backend 'mlx'",
            "installed backends",
        ),
        Case(
            f"{kit.name}: save to None",
            lambda t: ml.save_adapter(injected(), None),
            TypeError,
            "got NoneType",
            "str or os.PathLike",
        ),
        Case(
            f"{kit.name}: save to ''",
            lambda t: ml.save_adapter(injected(), ""),
            ValueError,
            "empty string",
            r"'\.'",
        ),
        Case(
            f"{kit.name}: load from a missing directory",
            lambda t: ml.load_adapter(kit.model(0), t / "gone"),
            ml.AdapterFileError,
            "gone does not exist",
            "pass the directory",
        ),
        Case(
            f"{kit.name}: load from the weights file",
            lambda t: ml.load_adapter(kit.model(0), saved_from(t) / "mixlight_adapter.safetensors"),
            ml.AdapterFileError,
            "is a file, not an adapter directory",
            "pass its directory",
        ),
    ]


def check_refused_loads_change_nothing(kit: Kit, tmp: Path) -> None:
    """A refused ``load_adapter`` leaves the model as it was, fresh or carrying adapters, so
    the next, correct load succeeds (it used to meet the refused file's adapter)."""
    wide = ml.save_adapter(ml.inject(kit.model(0, 16), MOV_KV, seed=0), tmp / "wide")
    right = ml.save_adapter(ml.inject(kit.model(0), MOV_KV, seed=1), tmp / "right")
    model = kit.model(0)
    before = kit.layout(model)
    with pytest.raises(ml.AdapterFileError, match="different base model"):
        ml.load_adapter(model, wide)
    assert kit.layout(model) == before
    ml.load_adapter(model, right)
    carrying = kit.layout(model)
    with pytest.raises(ml.AdapterFileError, match="different base model"):
        ml.load_adapter(model, wide, adapter_name="other")
    assert ml.adapter_names(model) == ["default"] and kit.layout(model) == carrying
