"""Hugging Face integration: an injected ``PreTrainedModel`` saves its adapter, and HF's
``Trainer`` checkpoints, resumes and reloads the best model as adapter-only directories.

transformers is not imported here: the functions work on whatever model and trainer they
are given, through the methods HF's classes have.
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any

from torch import nn


def install_save_pretrained(model: nn.Module) -> None:
    """Give an injected HF model (one whose class has ``save_pretrained``) the adapter-only
    ``save_pretrained`` below, on the instance; other models are left as they are."""
    if callable(getattr(type(model), "save_pretrained", None)):
        model.__dict__["save_pretrained"] = types.MethodType(save_pretrained, model)


def uninstall_save_pretrained(model: nn.Module) -> None:
    model.__dict__.pop("save_pretrained", None)


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    is_main_process: bool = True,
    state_dict: Any = None,
    push_to_hub: bool = False,
    **kwargs: Any,
) -> None:
    """``model.save_pretrained(dir)`` of an injected model: writes its active adapter with
    :func:`mixlight.save_adapter` (an adapter-only directory, as a PEFT model's
    ``save_pretrained`` does), not a full checkpoint that plain transformers would load
    with renamed or missing weights. HF's ``Trainer`` saves its checkpoints through this.

    ``state_dict`` and the full-checkpoint options (``safe_serialization``,
    ``max_shard_size``, ...) do not apply and are ignored; only the main process writes.
    For a full model, merge first: ``mixlight.merge_and_unload(model).save_pretrained(dir)``.
    """
    if push_to_hub:
        raise ValueError(
            "save_pretrained(..., push_to_hub=True) on a mixlight model: push the adapter "
            "with mixlight.push_to_hub(model, repo_id)"
        )
    if is_main_process:
        import mixlight as ml

        ml.save_adapter(model, save_directory)


def adapter_checkpoints(trainer: Any) -> Any:
    """Make an HF ``Trainer`` (or subclass: ``Seq2SeqTrainer``, TRL's trainers) resume from,
    and reload the best model from, the adapter-only checkpoints an injected model saves.

        trainer = mixlight_torch.hf.adapter_checkpoints(Seq2SeqTrainer(model=model, ...))

    Saving needs no hook (the injected model's ``save_pretrained`` writes its adapter); HF's
    Trainer looks for full weights when it loads a checkpoint, so this wraps its two loading
    methods on this trainer instance: a directory holding a mixlight adapter is loaded with
    :func:`mixlight.load_adapter`, any other goes to the Trainer's own loader. Returns the
    trainer.
    """
    from mixlight_torch.model import state_of, unwrap

    state_of(unwrap(trainer.model))  # a clear error when the model carries no adapter
    load_checkpoint, load_best = trainer._load_from_checkpoint, trainer._load_best_model

    def _load_from_checkpoint(resume_from_checkpoint: str, model: Any = None) -> None:
        if not holds_adapter(resume_from_checkpoint):
            return load_checkpoint(resume_from_checkpoint, model)
        _load(model if model is not None else trainer.model, resume_from_checkpoint)

    def _load_best_model() -> None:
        best = trainer.state.best_model_checkpoint
        if best is None or not holds_adapter(best):
            return load_best()
        _load(trainer.model, best)

    trainer._load_from_checkpoint = _load_from_checkpoint
    trainer._load_best_model = _load_best_model
    return trainer


def _load(model: nn.Module, directory: str) -> None:
    import mixlight as ml
    from mixlight_torch.model import unwrap

    ml.load_adapter(unwrap(model), directory)


def holds_adapter(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a mixlight adapter (its weights file)."""
    from mixlight.adapter_file import WEIGHTS_FILE

    return (Path(directory) / WEIGHTS_FILE).is_file()
