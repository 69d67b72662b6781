"""The portable adapter directory: ``mixlight_adapter.safetensors`` + ``mixlight_config.json``
+ ``README.md``.

``mixlight_adapter.safetensors`` is the whole adapter: float32 numpy arrays under canonical
names ``<module path>.<router|vectors|lora_A|lora_B|...>`` and, in its safetensors metadata,
the format name and version, the mixlight version, the :class:`~mixlight.AdapterConfig`, the
base model's adapted-module shapes with their fingerprint, which of the config's sites each
adapted module path took, what is known of the base model's identity, a sha256 of the arrays
and a sha256 of the metadata itself. One ``os.replace`` of this file commits a save. Reading
never evaluates a regular expression from the file: the recorded module paths are taken as
they are (a load that injects the file's config matches its patterns against the model only
once :func:`check_patterns` has shown the match ends in bounded time).
``mixlight_config.json`` is a human-readable copy of the same metadata (plus the file's
sha256), rewritten right after the commit; when the two disagree (a save killed between its
renames) the weights file wins. ``README.md`` is a Hugging Face Hub model card, written last
(see :mod:`mixlight._model_card`); it is documentation, never read back.

The format is 1.0, the first published one (mixlight 1.0). A newer minor version (1.1, ...)
may only add keys, which this reader ignores with a warning; a file of any other major
version is refused, naming the version it holds and the one this mixlight reads. The file
names carry the library's name because PEFT and transformers take any directory holding
``adapter_config.json`` for a PEFT adapter; a PEFT directory is recognised and refused with
the function that imports it. No pickle anywhere. This module is backend-neutral: it reads
and writes numpy dicts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from mixlight._atomic_dir import (
    as_directory,
    explain_os_error,
    file_kind,
    locked_writer,
    read_once,
)
from mixlight._base_identity import BaseIdentity, mismatch
from mixlight._model_card import CardFacts, card_or_none, is_replaceable
from mixlight._pattern_bounds import check_bounded
from mixlight._version import __version__
from mixlight.config import AdapterConfig
from mixlight.site_planning import ModuleShape, plan_recorded
from mixlight.site_spec import SiteSpec

FORMAT = "mixlight.adapter"
FORMAT_VERSION = "1.0"
WEIGHTS_FILE = "mixlight_adapter.safetensors"  # the adapter (the commit point)
CONFIG_FILE = "mixlight_config.json"  # a readable copy of its metadata, never read back
CARD_FILE = "README.md"
PEFT_CONFIG_FILE = "adapter_config.json"  # PEFT's: a directory holding it is PEFT's
_META_KEY = "mixlight.adapter"  # safetensors metadata key holding the JSON metadata
_VERSION = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})", re.ASCII)
_OURS = tuple(int(p) for p in FORMAT_VERSION.split("."))


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


def fingerprint(specs: Iterable[SiteSpec]) -> tuple[dict[str, dict[str, Any]], str]:
    """The adapted-module shapes of a base model (recorded in the file) and their sha256."""
    entries = {s.path: s.shape_entry() for s in specs}
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    return entries, digest


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
    directory: str | os.PathLike[str],
    config: AdapterConfig,
    specs: list[SiteSpec],
    arrays: Mapping[str, np.ndarray],
    *,
    base: BaseIdentity | None = None,
    card: CardFacts | None = None,
) -> Path:
    """Write an adapter directory with a single commit point.

    At every instant, including after a crash, a kill or a power loss at any step, reading
    ``directory`` gives exactly the adapter that was there before or exactly this one; a
    failed save (full disk, permissions, bad arrays) leaves the previous adapter untouched.
    Concurrent writers to one directory are serialised (last one wins, both complete), and
    staging files left by killed writers are removed. ``base`` records the base model's
    identity for the warning on load into a different checkpoint. ``card`` adds what only
    the model can tell (parameter total, routing) to the ``README.md`` model card; a card
    that cannot be rendered is skipped with a warning, never at the adapter's expense, and a
    ``README.md`` that mixlight did not write is left as it is.
    """
    from safetensors.numpy import save

    out = as_directory(directory, "save_adapter")
    if out.exists() and not out.is_dir():
        raise AdapterFileError(
            f"{out} exists and is not a directory; an adapter is saved as a directory: "
            "choose another path or remove that file"
        )
    _check_replaceable(out)
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
        "site_index": {spec.path: config.sites.index(spec.site) for spec in specs},
        "arrays_sha256": _arrays_sha256(arrays),
    }
    meta["metadata_sha256"] = _metadata_sha256(meta)
    # One metadata key: safetensors writes several in hash order, which differs between
    # processes, and the same adapter must always give the same bytes.
    weights = save(arrays, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    readable = dict(meta, weights_sha256=hashlib.sha256(weights).hexdigest())
    text = json.dumps(readable, indent=2, sort_keys=True) + "\n"
    card_text = card_or_none(config, specs, base or BaseIdentity(), card)
    committed: list[str] = []
    try:
        with locked_writer(out) as writer:
            committed = writer.committed
            writer.stage(WEIGHTS_FILE, weights)
            writer.stage(CONFIG_FILE, text.encode())
            with_card = card_text is not None and is_replaceable(out / CARD_FILE)
            if with_card:
                writer.stage(CARD_FILE, card_text.encode())  # type: ignore[union-attr]
            writer.commit(WEIGHTS_FILE)  # the commit point
            writer.commit(CONFIG_FILE)  # the readable copy
            if with_card:
                writer.commit(CARD_FILE)
    except OSError as err:
        raise explain_os_error(err, out, WEIGHTS_FILE in committed) from err
    return out


def _check_replaceable(out: Path) -> None:
    """Refuse a save whose weights or config name is taken by something other than a regular
    file (a directory, a FIFO, a device): a save writes regular files only, and the commit
    must not fail half way. (A ``README.md`` that is not a regular file is left alone.)"""
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        try:
            mode = os.stat(out / name).st_mode
        except FileNotFoundError:
            continue
        kind = file_kind(mode)
        if kind != "a regular file":
            raise AdapterFileError(
                f"{out / name} is {kind}; an adapter save writes it as a regular file, so "
                "nothing was written: remove it or save to another directory"
            )


def read_adapter(directory: str | os.PathLike[str]) -> AdapterFile:
    """Read and verify an adapter directory (format, version, checksums, names, shapes,
    finite values). The weights file is read once, whole, and is the adapter: a save
    running at the same time (one rename commits it) yields the old or the new adapter."""
    root = as_directory(directory, "read_adapter")
    _check_layout(root)
    weights = root / WEIGHTS_FILE
    data = read_once(weights)
    return _decode(_embedded_meta(data, weights), data, weights)


def _check_layout(root: Path) -> None:
    if not root.exists():
        raise AdapterFileError(
            f"adapter directory {root} does not exist; pass the directory save_adapter wrote"
        )
    names = {WEIGHTS_FILE, CONFIG_FILE, CARD_FILE}
    if not root.is_dir():
        hint = (
            f"; pass its directory {root.parent}"
            if root.name in names
            else f"; pass the directory that holds {WEIGHTS_FILE} and {CONFIG_FILE}"
        )
        raise AdapterFileError(f"{root} is a file, not an adapter directory{hint}")
    if not (root / WEIGHTS_FILE).is_file():
        peft = peft_description(root)
        if peft is not None:
            raise AdapterFileError(
                f"{root} is a PEFT adapter directory ({peft}), not a mixlight one; import it "
                f"with mixlight.load_peft_adapter(model, {str(root)!r}) (add upcycle=ml.MoV(...) "
                "to start every expert of a mixture from it)"
            )
        raise AdapterFileError(
            f"{root / WEIGHTS_FILE} is missing; an adapter directory needs {WEIGHTS_FILE} "
            f"(beside it, {CONFIG_FILE} is a readable copy of its metadata); point at the "
            "directory save_adapter wrote"
        )


def peft_description(root: Path) -> str | None:
    """``"adapter_config.json with peft_type 'IA3'"`` when ``root`` looks like a PEFT adapter
    directory (PEFT's config with its ``peft_type``, or PEFT's weights file), else None."""
    config = root / PEFT_CONFIG_FILE
    if config.is_file():
        try:
            meta = parse_json(read_once(config), config)
        except (OSError, AdapterFileError):
            meta = None
        if isinstance(meta, dict) and "peft_type" in meta:
            return f"{PEFT_CONFIG_FILE} with peft_type {meta['peft_type']!r}"
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (root / name).is_file():
            return f"it holds {name}"
    return None


def _embedded_meta(data: bytes, path: Path) -> dict[str, Any]:
    """The metadata the weights file carries in its safetensors header."""
    embedded = _header_metadata(_safetensors_header(data, path), path).get(_META_KEY)
    if embedded is None:
        raise AdapterFileError(
            f"{path} carries no mixlight metadata (a safetensors file that save_adapter did "
            "not write, or a damaged one); save the adapter again with mixlight.save_adapter"
        )
    meta = parse_json(embedded.encode(), path, "its embedded metadata")
    if not isinstance(meta, dict):
        raise AdapterFileError(f"{path}: its embedded metadata is not a JSON object")
    return meta


def _safetensors_header(data: bytes, path: Path) -> dict[str, Any]:
    fix = "it is truncated, corrupt or not a safetensors file; save the adapter again"
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if size < 2 or 8 + size > len(data):
        raise AdapterFileError(f"{path} is not a readable safetensors file: {fix}")
    try:
        header = parse_json(data[8 : 8 + size], path, "its safetensors header")
    except AdapterFileError:  # not UTF-8, not JSON, or nested too deeply
        raise AdapterFileError(f"{path} is not a readable safetensors file: {fix}") from None
    if not isinstance(header, dict):
        raise AdapterFileError(f"{path} is not a readable safetensors file: {fix}")
    return header


def _header_metadata(header: dict[str, Any], path: Path) -> dict[str, str]:
    """A safetensors header's ``__metadata__`` (a JSON object of strings, or absent)."""
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterFileError(
            f"{path}: its safetensors __metadata__ is not a JSON object of strings (got "
            f"{type(metadata).__name__}); the file is damaged or was not written by a "
            "safetensors writer: save the adapter again"
        )
    return metadata


def parse_json(raw: bytes, path: Path, what: str | None = None) -> Any:
    """``raw`` (UTF-8 JSON) decoded, or an :class:`AdapterFileError` naming ``path`` for
    text that is not UTF-8, not JSON, or nested too deeply to decode."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        problem = f"is not UTF-8 text ({err.reason} at byte {err.start})"
    except json.JSONDecodeError as err:
        problem = f"is not valid JSON ({err})"
    except RecursionError:
        problem = "is JSON nested too deeply to read"
    where = f"{path}: {what}" if what else str(path)
    raise AdapterFileError(f"{where} {problem}; the file is damaged, save the adapter again")


def _decode(meta: dict[str, Any], data: bytes, where: Path) -> AdapterFile:
    """Check ``meta`` and the arrays in ``data`` (both from the bytes of the weights file
    ``where``) against each other; build the result."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if meta.get("format") != FORMAT:
        raise AdapterFileError(f"{where} is not a mixlight adapter (format != {FORMAT!r})")
    newer_minor = _check_version(meta, where)[1] > _OURS[1]  # unknown keys only warn
    _check_metadata_sha256(meta, where)
    try:
        arrays = load(data)
    except SafetensorError as err:
        raise AdapterFileError(
            f"{where} is not a readable safetensors file ({err}); save the adapter again"
        ) from None
    if meta.get("arrays_sha256") != _arrays_sha256(arrays):
        raise AdapterFileError(
            f"{where}: its arrays do not match the sha256 recorded when "
            "it was saved (the file was modified or damaged); save the adapter again"
        )
    try:
        config = AdapterConfig.from_dict(meta["config"], allow_unknown=newer_minor)
        base = meta["base_model"]
        entries = base["sites"]
        shapes = {p: _module_shape(p, e, where) for p, e in entries.items()}
        specs = _recorded_sites(config, shapes, meta["site_index"], where)
        recorded = str(base["fingerprint"])
        if recorded != fingerprint(specs)[1]:
            raise AdapterFileError(
                f"{where}: its base-model fingerprint does not match the module shapes it "
                "records; the file was edited or damaged: save the adapter again"
            )
    except AdapterFileError:
        raise
    except (KeyError, TypeError, AttributeError) as err:
        raise AdapterFileError(
            f"{where} lacks or garbles the entry {err} that mixlight writes; the file was "
            "edited or damaged: save the adapter again (or restore the file)"
        ) from None
    except ValueError as err:
        raise AdapterFileError(f"{where}: {err}") from None
    check_arrays(specs, arrays, str(where))
    check_finite(
        arrays,
        str(where),
        "the adapter was saved from a diverged run; retrain it or use an earlier save",
    )
    return AdapterFile(
        config,
        specs,
        dict(arrays),
        entries,
        recorded,
        str(meta["format_version"]),
        str(meta.get("mixlight_version", "?")),
        BaseIdentity.from_dict(base.get("identity")),
    )


def check_fits(adapter: AdapterFile, model_specs: list[SiteSpec], where: str) -> None:
    """Refuse an adapter whose recorded base-model shapes differ from the model's."""
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


def warn_other_base(adapter: AdapterFile, base: BaseIdentity, where: str) -> None:
    """Warn (``UserWarning``) when the adapter's recorded base identity or sampled weights
    differ from ``base``, the model's (same shapes: it loads, but means little there)."""
    differs = mismatch(adapter.base_identity, base)
    if differs:
        warnings.warn(
            f"adapter at {where} was trained on a different base model of the same shape: "
            f"{differs}. It loads, but its results are only meaningful on the model it was "
            "trained on; load that checkpoint, or retrain the adapter on this one",
            UserWarning,
            stacklevel=3,
        )


def _module_shape(path: str, entry: Any, where: Path) -> ModuleShape:
    """One recorded module's shape: widths positive integers, heads None or a positive
    integer (an edited file could otherwise plan sites of impossible shapes)."""

    def positive(value: Any) -> bool:
        return type(value) is int and 1 <= value <= 2**31

    if (
        not isinstance(entry, dict)
        or not positive(entry.get("d_in"))
        or not positive(entry.get("d_out"))
        or not (entry.get("heads") is None or positive(entry.get("heads")))
    ):
        raise AdapterFileError(
            f"{where}: the recorded shape of {path} is {entry!r}, not positive integer widths "
            "d_in, d_out and heads (or null); the file was edited or damaged: save the adapter "
            "again"
        )
    return ModuleShape(entry["d_in"], entry["d_out"], entry["heads"])


def check_patterns(config: AdapterConfig, where: str) -> None:
    """Refuse a file's site patterns whose matching may not end in bounded time (they are
    matched against a model's paths when a load injects the file's config)."""
    try:
        for site in config.sites:
            check_bounded(site.pattern, where)
    except ValueError as err:
        raise AdapterFileError(str(err)) from None


def _recorded_sites(
    config: AdapterConfig, shapes: dict[str, ModuleShape], site_index: Any, where: Path
) -> list[SiteSpec]:
    """The file's sites from its recorded ``{path: index into config.sites}`` (no pattern
    of the file is matched: they are data)."""
    count = len(config.sites)
    if (
        not isinstance(site_index, dict)
        or set(site_index) != set(shapes)
        or not all(type(i) is int and 0 <= i < count for i in site_index.values())
    ):
        raise AdapterFileError(
            f"{where}: its site_index does not give each adapted module one of the config's "
            f"{count} sites; the file was edited or damaged: save the adapter again"
        )
    return plan_recorded(config, {p: (config.sites[i], shapes[p]) for p, i in site_index.items()})


def _check_metadata_sha256(meta: dict[str, Any], where: Path) -> None:
    """Refuse metadata that differs from the sha256 recorded over it, or lacks it (a flipped
    bit in the config, the sites or the base record would otherwise load and compute
    something else)."""
    recorded = meta.get("metadata_sha256")
    try:
        matches = recorded == _metadata_sha256(meta)
    except ValueError:  # NaN or inf in the metadata: never written by mixlight
        matches = False
    if not matches:
        raise AdapterFileError(
            f"{where}: its metadata (config, sites, base model record) does not match the "
            "sha256 recorded when it was saved (the file was edited or damaged); save the "
            "adapter again"
        )


def _metadata_sha256(meta: dict[str, Any]) -> str:
    """sha256 of the metadata, less this hash and the readable copy's ``weights_sha256``, as
    canonical JSON (sorted keys, no spaces)."""
    covered = {k: v for k, v in meta.items() if k not in ("metadata_sha256", "weights_sha256")}
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_version(meta: dict[str, Any], path: Path) -> tuple[int, int]:
    """``(major, minor)`` of the file's format version, which this mixlight must read: a
    string ``MAJOR.MINOR`` of plain decimal numbers, nothing else, of our major version."""
    version = meta.get("format_version")
    parsed = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if parsed is None:
        raise AdapterFileError(
            f"{path}: bad format_version {version!r} (expected a string 'MAJOR.MINOR' such as "
            f"{FORMAT_VERSION!r}); the file was edited or damaged: save the adapter again"
        )
    major, minor = (int(p) for p in parsed.groups())
    if major != _OURS[0]:
        writer = meta.get("mixlight_version", "an unknown version")
        raise AdapterFileError(
            f"{path}: adapter format {version} (written by mixlight {writer}) is not readable "
            f"by this mixlight {__version__}, which reads format {_OURS[0]}.x; load it with "
            "a mixlight that reads that format, or save the adapter again with this one"
        )
    return major, minor


def _arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of the arrays' names, shapes and little-endian float32 bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name], "<f4")
        digest.update(f"{name}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()
