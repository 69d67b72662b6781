"""HF-style dotted names for NNX modules and parameters."""

from collections.abc import Sequence

from flax import nnx

_HF_PARAM_NAMES = {
    "kernel": ("weight", True),
    "embedding": ("weight", False),
    "weight": ("weight", False),
}


def module_paths(model: nnx.Module) -> dict[str, nnx.Module]:
    """Dotted path -> submodule for every submodule (root excluded), e.g.
    ``"encoder.block.0.layer.0.SelfAttention.k"``; the same names as torch's ``named_modules()``."""
    return {".".join(map(str, path)): module for path, module in nnx.iter_modules(model) if path}


def hf_state_key(param_path: Sequence[str | int]) -> tuple[str, bool]:
    """NNX parameter path -> (HF state-dict key, whether the HF tensor is the transpose).

    ``(..., "q", "kernel")`` -> ``("....q.weight", True)`` (torch Linear is ``[out, in]``);
    ``embedding`` (``nnx.Embed``) and ``weight`` (layer norm) map to ``weight`` unchanged.
    """
    *module_path, name = param_path
    if name not in _HF_PARAM_NAMES:
        raise KeyError(f"no HF name for parameter {'.'.join(map(str, param_path))!r}")
    hf_name, transposed = _HF_PARAM_NAMES[name]
    return ".".join(map(str, (*module_path, hf_name))), transposed
