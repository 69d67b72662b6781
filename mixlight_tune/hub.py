"""Hugging Face Hub ids in ``mixlight tune``: a ``model`` or data ``path`` given as a Hub id.

A value that is not an existing local path but reads as a Hub repository id (``name`` or
``owner/name``) is resolved as ``transformers`` and ``huggingface_hub`` resolve it: from the
cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), downloading
into it unless offline (``HF_HUB_OFFLINE=1``), at ``revision`` (a branch, tag or commit;
default ``main``), pinned to the commit that revision names in the cache. Every backend then
loads a local folder. Nothing here is imported before a Hub id is used; errors are
:class:`HubError`, one line naming the id and the fix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# A Hub repository id: ``name`` or ``owner/name`` (letters, digits, ``-``, ``_``, ``.``).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# Names that are files, never repositories (``data = "train.jsonl"`` that is missing).
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow", ".txt", ".toml")
_TRUE = ("1", "ON", "YES", "TRUE")
# A model's files: configuration and tokenizer, then the weights in one format.
_MODEL_FILES = ("*.json", "*.model", "*.txt")
_WEIGHTS = (
    ("model.safetensors", "model-*.safetensors"),
    ("pytorch_model.bin", "pytorch_model-*.bin"),
)
HUB_HINT = "pip install 'mixlight[t5]' (transformers brings huggingface_hub)"


class HubError(ValueError):
    """A Hub id that cannot be resolved (not cached while offline, unknown, unreachable)."""


@dataclass(frozen=True)
class Snapshot:
    """A Hub repository resolved to a local folder at one commit."""

    repo_id: str
    folder: Path
    commit: str


def is_hub_id(value: str) -> bool:
    """Whether ``value`` reads as a Hub repository id (not a path, not a file name)."""
    return (
        bool(_HUB_ID.fullmatch(value))
        and ".." not in value
        and not value.lower().endswith(_FILE_SUFFIXES)
    )


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``/``HF_DATASETS_OFFLINE``) is set, now or
    when huggingface_hub was imported."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(n, "").upper() in _TRUE for n in names):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> str | None:
    """The Hub cache as the environment names it now (``None``: huggingface_hub's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def resolve_model(repo_id: str, revision: str | None) -> Snapshot:
    """The local snapshot of model ``repo_id`` at ``revision``: its configuration, tokenizer
    and weights (safetensors when the repository has them, else ``pytorch_model*.bin``)."""
    snapshot = _resolve(repo_id, revision, "model", cache_dir(), offline())
    if not any(snapshot.folder.glob(p) for pair in _WEIGHTS for p in pair):
        raise HubError(
            f"model = {repo_id!r}: the cached snapshot {snapshot.folder} has no weights "
            "(model.safetensors or pytorch_model.bin); download the model whole "
            f"(hf download {repo_id}) or pass a local folder"
        )
    return snapshot


def cached_dataset(repo_id: str, revision: str | None) -> Path | None:
    """The local snapshot folder of dataset ``repo_id`` at ``revision`` when the Hub cache
    holds one (what ``datasets`` downloaded there, or ``hf download --repo-type dataset``)."""
    try:
        return _resolve(repo_id, revision, "dataset", cache_dir(), True).folder
    except HubError:
        return None


def name_model(model: Any, snapshot: Snapshot) -> None:
    """Make a loaded base report the Hub id and commit (what saved adapters record as the
    base model and its model card names) rather than the cache folder it was read from."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "_name_or_path"):  # a transformers model
        config._name_or_path = snapshot.repo_id
        config._commit_hash = snapshot.commit
    else:  # mixlight_jax's T5 (records ``name_or_path``; ``revision`` where it reads one)
        model.name_or_path = snapshot.repo_id
        model.revision = snapshot.commit


@cache
def _resolve(
    repo_id: str, revision: str | None, kind: str, cache: str | None, local_only: bool
) -> Snapshot:
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise HubError(f"{repo_id!r} is a Hub id; resolving it needs {HUB_HINT}") from None
    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            repo_type=kind,
            revision=revision,
            cache_dir=cache,
            local_files_only=local_only,
            allow_patterns=None if kind == "dataset" else _model_patterns(repo_id, revision),
        )
    except errors.LocalEntryNotFoundError:
        place = cache or "the default Hugging Face cache"
        flag = " --repo-type dataset" if kind == "dataset" else ""
        raise HubError(
            f"{kind} {where} is not in the Hub cache ({place}) and HF_HUB_OFFLINE is set: "
            f"download it where there is network (hf download {repo_id}{flag}) into this "
            "cache, or pass a local folder"
        ) from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as err:
        reason = str(err).strip().splitlines()[0]
        raise HubError(
            f"{kind} {where}: not found on the Hub ({reason}); check the id and "
            "revision, or pass a local folder"
        ) from None
    except (OSError, errors.HfHubHTTPError) as err:  # network failures
        raise HubError(
            f"{kind} {where}: could not be fetched ({type(err).__name__}: {err}); retry, set "
            "HF_HUB_OFFLINE=1 to use the cache only, or pass a local folder"
        ) from None
    return Snapshot(repo_id, Path(folder), Path(folder).name)


def _model_patterns(repo_id: str, revision: str | None) -> list[str] | None:
    """The files of a model worth downloading: configuration, tokenizer and one weights
    format (a repository often holds the same weights as safetensors, PyTorch, TF and Flax)."""
    if offline():
        return None
    import huggingface_hub

    files = huggingface_hub.list_repo_files(repo_id, revision=revision)
    for single, shards in _WEIGHTS:
        if single in files or any(Path(f).match(shards) for f in files):
            return [*_MODEL_FILES, single, shards]
    return list(_MODEL_FILES)
