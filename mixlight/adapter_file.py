"""The portable adapter directory: ``adapter.safetensors`` + ``adapter_config.json``.

``adapter.safetensors`` is the whole adapter: float32 numpy arrays under canonical names
``<module path>.<router|vectors|lora_A|lora_B|...>`` and, in its safetensors metadata, the
format name and version, the mixlight version, the :class:`~mixlight.AdapterConfig`, the base
model's adapted-module shapes with their fingerprint, what is known of the base model's
identity, and a sha256 of the arrays. One ``os.replace`` of this file commits a save.
``adapter_config.json`` is a human-readable copy of the same metadata (plus the file's
sha256, which mixlight 1.0 readers check), rewritten right after the commit; when the two
disagree (a save killed between its two renames) the weights file wins.

Directories written by mixlight 1.0 (no metadata in the weights file; the JSON is the
authority and its ``weights_sha256`` guards the weights) are still read. No pickle anywhere.
This module is backend-neutral: it reads and writes numpy dicts.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from mixlight._atomic_dir import as_directory, explain_os_error, locked_writer, read_once
from mixlight._base_identity import BaseIdentity, mismatch
from mixlight._version import __version__
from mixlight.config import AdapterConfig
from mixlight.site_spec import ModuleShape, SiteSpec, fingerprint, plan_sites

FORMAT = "mixlight.adapter"
FORMAT_VERSION = "1.1"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
_META_KEY = "mixlight.adapter"  # safetensors metadata key holding the JSON metadata
_READ_ATTEMPTS = 3  # a 1.0-layout read that races a save is retried


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
    base_identity: BaseIdentity = BaseIdentity()


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


def check_finite(arrays: Mapping[str, np.ndarray], where: str, fix: str) -> None:
    """Refuse arrays holding NaN or inf (a diverged run), naming them."""
    bad = [n for n, a in arrays.items() if not np.isfinite(a).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise AdapterFileError(f"{where}: non-finite values (NaN/inf) in {shown}; {fix}")


def write_adapter(
    directory: str | os.PathLike,
    config: AdapterConfig,
    specs: list[SiteSpec],
    arrays: Mapping[str, np.ndarray],
    *,
    base: BaseIdentity | None = None,
) -> Path:
    """Write an adapter directory with a single commit point.

    At every instant, including after a crash, a kill or a power loss at any step, reading
    ``directory`` gives exactly the adapter that was there before or exactly this one; a
    failed save (full disk, permissions, bad arrays) leaves the previous adapter untouched.
    Concurrent writers to one directory are serialised (last one wins, both complete), and
    staging files left by killed writers are removed. ``base`` records the base model's
    identity for the warning on load into a different checkpoint.
    """
    from safetensors.numpy import save

    out = as_directory(directory, "save_adapter")
    if out.exists() and not out.is_dir():
        raise AdapterFileError(
            f"{out} exists and is not a directory; an adapter is saved as a directory: "
            "choose another path or remove that file"
        )
    arrays = {n: np.ascontiguousarray(a, np.float32) for n, a in arrays.items()}
    check_arrays(specs, arrays, "arrays to save")
    check_finite(
        arrays,
        "refusing to save the adapter",
        "the run diverged (lower the learning rate or check the data) and nothing was written",
    )
    entries, digest = fingerprint(specs)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mixlight_version": __version__,
        "config": config.to_dict(),
        "base_model": {
            "sites": entries,
            "fingerprint": digest,
            "identity": (base or BaseIdentity()).to_dict(),
        },
        "arrays_sha256": _arrays_sha256(arrays),
    }
    # One metadata key: safetensors writes several in hash order, which differs between
    # processes, and the same adapter must always give the same bytes.
    weights = save(arrays, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    readable = dict(meta, weights_sha256=hashlib.sha256(weights).hexdigest())
    text = json.dumps(readable, indent=2, sort_keys=True) + "\n"
    committed: list[str] = []
    try:
        with locked_writer(out) as writer:
            committed = writer.committed
            writer.stage(WEIGHTS_FILE, weights)
            writer.stage(CONFIG_FILE, text.encode())
            writer.commit(WEIGHTS_FILE)  # the commit point
            writer.commit(CONFIG_FILE)  # the readable copy
    except OSError as err:
        raise explain_os_error(err, out, WEIGHTS_FILE in committed) from err
    return out


def read_adapter(directory: str | os.PathLike) -> AdapterFile:
    """Read and verify an adapter directory (format, version, checksum, names, shapes,
    finite values). A save running at the same time yields the old or the new adapter."""
    root = as_directory(directory, "read_adapter")
    _check_layout(root)
    for attempt in range(_READ_ATTEMPTS):
        data = read_once(root / WEIGHTS_FILE)
        meta = _embedded_meta(data, root / WEIGHTS_FILE)
        if meta is not None:
            return _decode(meta, data, root / WEIGHTS_FILE)
        meta = _read_json(root / CONFIG_FILE)  # a mixlight 1.0 directory
        if meta.get("weights_sha256") == hashlib.sha256(data).hexdigest():
            return _decode(meta, data, root / CONFIG_FILE)
        if attempt + 1 < _READ_ATTEMPTS and _embedded_meta(
            read_once(root / WEIGHTS_FILE), root / WEIGHTS_FILE
        ):
            continue  # a save replaced the weights meanwhile: read the new ones
        break
    raise AdapterFileError(
        f"{root / WEIGHTS_FILE} does not match the checksum in {CONFIG_FILE} (truncated, "
        "replaced, or an interrupted save); save the adapter again"
    )


def _check_layout(root: Path) -> None:
    if not root.exists():
        raise AdapterFileError(
            f"adapter directory {root} does not exist; pass the directory save_adapter wrote"
        )
    if not root.is_dir():
        hint = (
            f"; pass its directory {root.parent}"
            if root.name in (CONFIG_FILE, WEIGHTS_FILE)
            else f"; pass the directory that holds {WEIGHTS_FILE} and {CONFIG_FILE}"
        )
        raise AdapterFileError(f"{root} is a file, not an adapter directory{hint}")
    if not (root / WEIGHTS_FILE).is_file():
        raise AdapterFileError(
            f"{root / WEIGHTS_FILE} is missing; an adapter directory needs {WEIGHTS_FILE} "
            f"(and {CONFIG_FILE}); point at the directory save_adapter wrote"
        )


def _embedded_meta(data: bytes, path: Path) -> dict[str, Any] | None:
    """The metadata a 1.1 weights file carries; None for a 1.0 file."""
    header = _safetensors_header(data, path)
    embedded = (header.get("__metadata__") or {}).get(_META_KEY)
    if embedded is None:
        return None
    try:
        meta = json.loads(embedded)
    except json.JSONDecodeError as err:
        raise AdapterFileError(f"{path}: its embedded metadata is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise AdapterFileError(f"{path}: its embedded metadata is not a JSON object")
    return meta


def _safetensors_header(data: bytes, path: Path) -> dict[str, Any]:
    fix = "it is truncated, corrupt or not a safetensors file; save the adapter again"
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if size < 2 or 8 + size > len(data):
        raise AdapterFileError(f"{path} is not a readable safetensors file: {fix}")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterFileError(f"{path} is not a readable safetensors file: {fix}") from None
    if not isinstance(header, dict):
        raise AdapterFileError(f"{path} is not a readable safetensors file: {fix}")
    return header


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AdapterFileError(
            f"{path} is missing and {WEIGHTS_FILE} carries no metadata (a mixlight 1.0 "
            "adapter needs both files); copy the whole directory save_adapter wrote"
        )
    try:
        meta = json.loads(read_once(path).decode("utf-8"))
    except UnicodeDecodeError as err:
        raise AdapterFileError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); the file is "
            "damaged, save the adapter again"
        ) from None
    except json.JSONDecodeError as err:
        raise AdapterFileError(f"{path} is not valid JSON: {err}; save the adapter again") from None
    if not isinstance(meta, dict):
        raise AdapterFileError(f"{path} is not a mixlight adapter (not a JSON object)")
    return meta


def _decode(meta: dict[str, Any], data: bytes, where: Path) -> AdapterFile:
    """Check ``meta`` and the arrays in ``data`` against each other; build the result."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if meta.get("format") != FORMAT:
        raise AdapterFileError(f"{where} is not a mixlight adapter (format != {FORMAT!r})")
    version = str(meta.get("format_version", ""))
    newer_minor = _check_version(version, where)
    try:
        arrays = load(data)
    except SafetensorError as err:
        raise AdapterFileError(
            f"{where.parent / WEIGHTS_FILE} is not a readable safetensors file ({err}); "
            "save the adapter again"
        ) from None
    if "arrays_sha256" in meta and meta["arrays_sha256"] != _arrays_sha256(arrays):
        raise AdapterFileError(
            f"{where.parent / WEIGHTS_FILE}: its arrays do not match the sha256 recorded when "
            "it was saved (the file was modified or damaged); save the adapter again"
        )
    try:
        config = AdapterConfig.from_dict(meta["config"], allow_unknown=newer_minor)
        base = meta["base_model"]
        entries = base["sites"]
        shapes = {p: ModuleShape(e["d_in"], e["d_out"], e["heads"]) for p, e in entries.items()}
        specs = plan_sites(config, list(entries), lambda path, site: shapes[path])
        recorded = str(base["fingerprint"])
    except (KeyError, TypeError, AttributeError) as err:
        raise AdapterFileError(
            f"{where} lacks or garbles the entry {err} that mixlight writes; the file was "
            "edited or damaged: save the adapter again (or restore the file)"
        ) from None
    except ValueError as err:
        raise AdapterFileError(f"{where}: {err}") from None
    check_arrays(specs, arrays, str(where.parent / WEIGHTS_FILE))
    check_finite(
        arrays,
        str(where.parent / WEIGHTS_FILE),
        "the adapter was saved from a diverged run; retrain it or use an earlier save",
    )
    return AdapterFile(
        config,
        specs,
        dict(arrays),
        entries,
        recorded,
        version,
        str(meta.get("mixlight_version", "?")),
        BaseIdentity.from_dict(base.get("identity")),
    )


def check_fits(
    adapter: AdapterFile,
    model_specs: list[SiteSpec],
    where: str,
    base: BaseIdentity | None = None,
) -> None:
    """Refuse an adapter whose recorded base-model shapes differ from the model's; warn
    (``UserWarning``) when the recorded identity or sampled weights differ from ``base``."""
    model_entries, digest = fingerprint(model_specs)
    if digest != adapter.fingerprint:
        diffs = []
        for path in sorted(set(model_entries) | set(adapter.base_model)):
            ours, theirs = model_entries.get(path), adapter.base_model.get(path)
            if ours != theirs:
                diffs.append(f"{path}: adapter has {theirs}, model has {ours}")
        raise AdapterFileError(
            f"adapter at {where} was saved for a different base model "
            f"({len(diffs)} differing entries): "
            + "; ".join(diffs[:10])
            + "; load it into the model it was trained on, or retrain it for this one"
        )
    differs = mismatch(adapter.base_identity, base) if base is not None else None
    if differs:
        warnings.warn(
            f"adapter at {where} was trained on a different base model of the same shape: "
            f"{differs}. It loads, but its results are only meaningful on the model it was "
            "trained on; load that checkpoint, or retrain the adapter on this one",
            UserWarning,
            stacklevel=3,
        )


def _check_version(version: str, path: Path) -> bool:
    """True when the file is from a newer minor version (unknown keys only warn)."""
    try:
        major, minor = (int(p) for p in version.split("."))
    except ValueError:
        raise AdapterFileError(
            f"{path}: bad format_version {version!r} (expected 'MAJOR.MINOR'); the file was "
            "edited or damaged: save the adapter again"
        ) from None
    ours_major, ours_minor = (int(p) for p in FORMAT_VERSION.split("."))
    if major != ours_major:
        raise AdapterFileError(
            f"{path}: format version {version} is not readable by this mixlight "
            f"(reads {ours_major}.x); upgrade or downgrade mixlight"
        )
    return minor > ours_minor


def _arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of the arrays' names, shapes and little-endian float32 bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name], "<f4")
        digest.update(f"{name}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()
