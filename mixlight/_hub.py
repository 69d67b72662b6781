"""Hugging Face Hub ids for adapters: resolve ``"user/repo"`` to a local snapshot, and push
an adapter directory (with its model card) to a repo. ``huggingface_hub`` is optional and
imported only here, only when a Hub id or a push is asked for; offline
(``HF_HUB_OFFLINE=1``) a repo id resolves from the local cache.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mixlight._atomic_dir import as_directory
from mixlight._model_card import retarget
from mixlight.adapter_file import (
    CARD_FILE,
    CONFIG_FILE,
    PEFT_CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterFileError,
)

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# What an adapter repo may hold that mixlight reads: its own files and PEFT's.
ADAPTER_FILES = [
    WEIGHTS_FILE,
    CONFIG_FILE,
    CARD_FILE,
    PEFT_CONFIG_FILE,
    "adapter_model.safetensors",
]


def resolve(source: Any, caller: str, revision: str | None = None) -> Path:
    """``source`` as a local directory: itself when it exists (or is not a Hub repo id),
    else the snapshot of Hub repo ``source`` (downloaded, or from the cache when offline)."""
    path = as_directory(source, caller)
    if path.exists() or not isinstance(source, str) or not REPO_ID.fullmatch(source):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise AdapterFileError(
            f"{caller}: {source!r} is not an existing directory; read as a Hugging Face Hub "
            "repo id it needs huggingface_hub: pip install huggingface_hub (or pass the "
            "directory save_adapter wrote)"
        ) from None
    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=ADAPTER_FILES))
    except Exception as err:  # the Hub's errors: not found, gated, offline without a cache
        raise AdapterFileError(
            f"{caller}: {source!r} is neither an existing directory nor a Hub repo that could "
            f"be fetched ({type(err).__name__}: {_first_line(err)}); pass the directory "
            "save_adapter wrote, or an existing repo id such as 'user/repo' (offline, "
            "HF_HUB_OFFLINE=1, only repos already in the cache resolve)"
        ) from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no detail"


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload mixlight adapter",
    revision: str | None = None,
    backend: str | None = None,
    adapter_name: str | None = None,
) -> Any:
    """Save the model's adapter (weights, readable config, and a model card whose loading
    snippets name ``repo_id``) and upload it to Hub repo ``repo_id`` (created if missing) in
    one commit; returns ``huggingface_hub``'s commit info. ``adapter_name`` picks one of the
    model's named adapters (default: the active one). Load it back with
    ``ml.load_adapter(model, repo_id)``.
    """
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise ValueError(f"push_to_hub: repo_id must look like 'user/repo', got {repo_id!r}")
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError(
            "push_to_hub needs huggingface_hub: pip install huggingface_hub"
        ) from None
    from mixlight.api import save_adapter

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="mixlight-push-") as tmp:
        folder = save_adapter(
            model, Path(tmp) / "adapter", backend=backend, adapter_name=adapter_name
        )
        retarget(folder / CARD_FILE, repo_id)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=os.fspath(folder),
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            allow_patterns=[WEIGHTS_FILE, CONFIG_FILE, CARD_FILE],
        )
