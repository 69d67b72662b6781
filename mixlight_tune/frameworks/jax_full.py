"""Full fine-tuning's model saved from JAX (:mod:`mixlight_tune.full_model`): mixlight's NNX
T5 written as a transformers checkpoint, each parameter under its HF name (kernels transposed
to torch's ``[out, in]``), the base's ``config.json`` beside it. Parameters split over
several processes' devices are gathered first; process 0 writes. bfloat16 weights are stored
as their exact float32 values (numpy, which safetensors writes from, has no bfloat16)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from mixlight_jax.t5.paths import hf_state_key
from mixlight_tune.full_model import write_folder


def _value(array: Any) -> np.ndarray:
    if not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        array = multihost_utils.process_allgather(array, tiled=True)
    value = np.asarray(jax.device_get(array))
    return value.astype(np.float32) if value.dtype.name == "bfloat16" else value


def save_model(model: Any, base: Any, directory: Path) -> Path:
    """Write ``model`` (every weight trained) to ``directory``; every process calls it."""
    tensors: dict[str, np.ndarray] = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key, transposed = hf_state_key(tuple(map(str, path)))  # as t5.loading does
        value = _value(variable.get_value())
        tensors[key] = np.ascontiguousarray(value.T if transposed else value)
    if jax.process_index() == 0:

        def write(folder: Path) -> None:
            save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
            shutil.copy2(Path(base.path) / "config.json", folder / "config.json")

        write_folder(directory, Path(base.path), write)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"mixlight tune saved {directory}")
    return directory
