"""Reading a HuggingFace checkpoint directory: ``config.json`` and the torch-layout state dict."""

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.flax import load_file

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"


class CheckpointError(ValueError):
    """Weights missing, unexpected or wrongly shaped; the message names the key."""


def checkpoint_directory(path: str | Path) -> Path:
    """``path`` as an existing directory, else ``FileNotFoundError``/``NotADirectoryError``."""
    directory = Path(path)
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"checkpoint path {str(directory)!r} is not a directory")
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    """Parsed ``directory/config.json``."""
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in checkpoint directory {str(directory)!r}")
    return _json_object(config_path)


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a :class:`CheckpointError` naming the file for text that
    is not UTF-8, not JSON, nested too deeply to read, or not an object."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        problem = "JSON nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise CheckpointError(
            f"{path} is not a readable JSON file ({problem}); copy the checkpoint again"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; copy the checkpoint again")
    return data


def read_state_dict(directory: Path) -> dict[str, Any]:
    """HF state dict (torch layout, e.g. Linear ``[out, in]``) as jax/numpy arrays.

    Looks for ``model.safetensors``, then ``model.safetensors.index.json`` (sharded), then
    ``pytorch_model.bin`` (needs torch; loaded with ``weights_only=True``).
    """
    if (directory / SAFETENSORS_NAME).is_file():
        return load_file(directory / SAFETENSORS_NAME)
    if (directory / SAFETENSORS_INDEX_NAME).is_file():
        return _read_sharded_safetensors(directory)
    if (directory / TORCH_NAME).is_file():
        return _read_torch_bin(directory / TORCH_NAME)
    raise FileNotFoundError(
        f"no weights in checkpoint directory {str(directory)!r}: expected one of "
        f"{SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME}, {TORCH_NAME}"
    )


def _read_sharded_safetensors(directory: Path) -> dict[str, Any]:
    weight_map = _json_object(directory / SAFETENSORS_INDEX_NAME).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"{directory / SAFETENSORS_INDEX_NAME} has no weight_map of shard file names; "
            "copy the checkpoint again"
        )
    state: dict[str, Any] = {}
    for shard in sorted(set(weight_map.values())):
        if not (directory / shard).is_file():
            raise FileNotFoundError(
                f"shard {shard!r} listed in {SAFETENSORS_INDEX_NAME} is missing"
            )
        state.update(load_file(directory / shard))
    return state


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    if importlib.util.find_spec("torch") is None:
        raise CheckpointError(f"{path.name} needs torch to be read, and torch is not installed")
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {
        key: (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        for key, tensor in state.items()
    }
