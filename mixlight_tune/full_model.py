"""Full fine-tuning's output: the tuned model as a transformers checkpoint, ``output_dir/model``.

An adapter run's product is its adapter; a full fine-tuning run (``adapter = "full"``) changes
every weight, so ``mixlight tune`` saves the whole model, in transformers' format (a
``config.json`` and ``model.safetensors``, the base folder's tokenizer and generation files
beside them): ``model = "runs/.../model"`` tunes or scores it again, and
``T5ForConditionalGeneration.from_pretrained`` (or mixlight's JAX T5) loads it. The weights
are saved in the dtype they trained in.

The folder is written whole under a temporary name in ``output_dir`` (``.model.<random>.tmp``,
which ``mixlight tune`` counts as its own) and renamed into place; a folder saved before is
moved aside first and deleted after, so a reader never finds a partial ``model``. Each backend
provides ``save_model(model, base, directory)`` (``mixlight_tune.frameworks.<backend>_full``):
every process calls it, the writing process alone writes.
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._files import umask

DIR = "model"
# The base folder's files a saved model keeps (the tokenizer's and the generation settings);
# the weights and ``config.json`` are the tuned model's own.
COPIED = (
    "*.model",
    "tokenizer*.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "generation_config.json",
)


def save(backend: str, model: Any, base: Any, output_dir: Path) -> Path:
    """Save full fine-tuning's ``model`` to ``output_dir/model`` (every process calls it)."""
    module = importlib.import_module(f"mixlight_tune.frameworks.{backend}_full")
    return module.save_model(model, base, output_dir / DIR)  # type: ignore[no-any-return]


def write_folder(directory: Path, source: Path, write: Callable[[Path], None]) -> Path:
    """Write a model folder at ``directory`` atomically: ``write(staging)`` puts the weights
    and ``config.json`` there; the tokenizer files of ``source`` are copied beside them."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    name = f".{directory.name}."
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=name, suffix=".tmp"))
    previous = None
    try:
        staging.chmod(0o777 & ~umask())
        write(staging)
        for pattern in COPIED:
            for file in source.glob(pattern):
                if file.is_file() and not (staging / file.name).exists():
                    shutil.copy2(file, staging / file.name)
        for file in staging.iterdir():  # some writers make their files private to the owner
            file.chmod(0o666 & ~umask())
        if directory.exists():
            previous = directory.with_name(f"{name}{secrets.token_hex(4)}.tmp")
            os.rename(directory, previous)
        os.rename(staging, directory)
    except BaseException:
        if previous is not None and not directory.exists():
            os.rename(previous, directory)
            previous = None
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    return directory
