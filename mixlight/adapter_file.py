"""The portable adapter directory: ``adapter_config.json`` + ``adapter.safetensors``.

``adapter_config.json`` holds the format name and version, the mixlight version, the
:class:`~mixlight.AdapterConfig`, the base model's adapted-module shapes with their sha256
fingerprint, and the sha256 of the weights file. ``adapter.safetensors`` holds float32 numpy
arrays under canonical names ``<module path>.<router|vectors|lora_A|lora_B|...>``.
No pickle anywhere. This module is backend-neutral: it reads and writes numpy dicts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from mixlight._version import __version__
from mixlight.config import AdapterConfig
from mixlight.site_spec import ModuleShape, SiteSpec, fingerprint, plan_sites

FORMAT = "mixlight.adapter"
FORMAT_VERSION = "1.0"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"


class AdapterFileError(ValueError):
    """An adapter directory that cannot be read or does not fit the model."""


@attrs.frozen
class AdapterFile:
    """A loaded adapter directory."""

    config: AdapterConfig
    specs: list[SiteSpec]
    arrays: dict[str, np.ndarray]
    base_model: dict[str, dict[str, Any]]
    fingerprint: str
    format_version: str
    mixlight_version: str


def expected_shapes(specs: list[SiteSpec]) -> dict[str, tuple[int, ...]]:
    """Canonical array name -> shape for these sites."""
    return {
        spec.canonical_name(name): tuple(p.shape)
        for spec in specs
        for name, p in spec.param_specs().items()
    }


def check_arrays(specs: list[SiteSpec], arrays: Mapping[str, Any], where: str = "adapter") -> None:
    """Raise :class:`AdapterFileError` listing missing, unexpected and misshapen arrays."""
    expected = expected_shapes(specs)
    problems = [f"missing {n} {s}" for n, s in expected.items() if n not in arrays]
    problems += [f"unexpected {n}" for n in arrays if n not in expected]
    problems += [
        f"{n}: shape {tuple(arrays[n].shape)}, expected {s}"
        for n, s in expected.items()
        if n in arrays and tuple(arrays[n].shape) != s
    ]
    if problems:
        shown = "; ".join(problems[:20]) + (
            f"; ... {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise AdapterFileError(f"{where} does not match its config: {shown}")


def write_adapter(
    directory: str | os.PathLike,
    config: AdapterConfig,
    specs: list[SiteSpec],
    arrays: Mapping[str, np.ndarray],
) -> Path:
    """Write an adapter directory atomically.

    Both files are written and flushed in a staging directory first; a failure there leaves
    any previous adapter untouched. They are then moved into place with ``os.replace``, the
    weights first and the config last; the config records the weights' sha256, so the
    moment between the two renames cannot be mistaken for a valid adapter.
    """
    from safetensors.numpy import save_file

    arrays = {n: np.ascontiguousarray(a, np.float32) for n, a in arrays.items()}
    check_arrays(specs, arrays, "arrays to save")
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise AdapterFileError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    entries, digest = fingerprint(specs)
    staging = Path(tempfile.mkdtemp(prefix=".mixlight-staging-", dir=out))
    try:
        weights = staging / WEIGHTS_FILE
        save_file(arrays, str(weights), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "mixlight_version": __version__,
            "config": config.to_dict(),
            "base_model": {"sites": entries, "fingerprint": digest},
            "weights_sha256": _sha256(weights),
        }
        (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        os.replace(weights, out / WEIGHTS_FILE)
        os.replace(staging / CONFIG_FILE, out / CONFIG_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def read_adapter(directory: str | os.PathLike) -> AdapterFile:
    """Read and verify an adapter directory (format, version, checksum, names, shapes)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    root = Path(directory)
    config_path, weights_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    if not root.is_dir():
        raise AdapterFileError(f"adapter directory {root} does not exist")
    for path in (config_path, weights_path):
        if not path.is_file():
            raise AdapterFileError(
                f"{path} is missing; an adapter directory needs {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
    try:
        meta = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise AdapterFileError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AdapterFileError(f"{config_path} is not a mixlight adapter (format != {FORMAT!r})")
    version = str(meta.get("format_version", ""))
    newer_minor = _check_version(version, config_path)
    if meta.get("weights_sha256") != _sha256(weights_path):
        raise AdapterFileError(
            f"{weights_path} does not match the checksum in {CONFIG_FILE} (truncated, "
            "replaced, or an interrupted save); save the adapter again"
        )
    try:
        arrays = load_file(str(weights_path))
    except SafetensorError as err:
        raise AdapterFileError(
            f"{weights_path} is not a readable safetensors file: {err}"
        ) from None
    config = AdapterConfig.from_dict(meta["config"], allow_unknown=newer_minor)
    entries = meta["base_model"]["sites"]
    shapes = {p: ModuleShape(e["d_in"], e["d_out"], e["heads"]) for p, e in entries.items()}
    specs = plan_sites(config, list(entries), lambda path, site: shapes[path])
    check_arrays(specs, arrays, str(weights_path))
    return AdapterFile(
        config,
        specs,
        dict(arrays),
        entries,
        meta["base_model"]["fingerprint"],
        version,
        str(meta.get("mixlight_version", "?")),
    )


def check_fits(adapter: AdapterFile, model_specs: list[SiteSpec], where: str) -> None:
    """Refuse an adapter whose recorded base-model shapes differ from the model's."""
    model_entries, digest = fingerprint(model_specs)
    if digest == adapter.fingerprint:
        return
    diffs = []
    for path in sorted(set(model_entries) | set(adapter.base_model)):
        ours, theirs = model_entries.get(path), adapter.base_model.get(path)
        if ours != theirs:
            diffs.append(f"{path}: adapter has {theirs}, model has {ours}")
    raise AdapterFileError(
        f"adapter at {where} was saved for a different base model "
        f"({len(diffs)} differing entries): " + "; ".join(diffs[:10])
    )


def _check_version(version: str, path: Path) -> bool:
    """True when the file is from a newer minor version (unknown keys only warn)."""
    try:
        major, minor = (int(p) for p in version.split("."))
    except ValueError:
        raise AdapterFileError(f"{path}: bad format_version {version!r}") from None
    ours_major, ours_minor = (int(p) for p in FORMAT_VERSION.split("."))
    if major != ours_major:
        raise AdapterFileError(
            f"{path}: format version {version} is not readable by this mixlight "
            f"(reads {ours_major}.x); upgrade or downgrade mixlight"
        )
    return minor > ours_minor


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
