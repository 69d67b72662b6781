"""Full fine-tuning's model saved from torch (:mod:`mixlight_tune.full_model`): the tuned
``transformers`` model's ``save_pretrained``. Under ``torchrun`` (DDP: every process holds
the same weights) rank 0 writes and the others wait for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from mixlight_tune.full_model import write_folder
from mixlight_tune.steps import DemoError


def save_model(model: Any, base: Any, directory: Path) -> Path:
    """Write ``model`` (unwrapped, every weight trained) to ``directory``."""
    parallel = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    error = None
    if not parallel or dist.get_rank() == 0:
        try:
            write_folder(directory, Path(base.path), model.save_pretrained)
        except Exception as err:  # reported to every rank below
            if not parallel:
                raise
            error = f"{type(err).__name__}: {err}"
    if parallel:
        outcome = [error]
        dist.broadcast_object_list(outcome, src=0)
        if outcome[0] is not None:
            raise DemoError(f"saving the model to {directory} failed on rank 0: {outcome[0]}")
    return directory
