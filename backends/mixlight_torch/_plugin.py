"""Entry point of the torch backend; importing this module does not import torch."""

from mixlight.extend import BackendPlugin


def _load():
    from mixlight_torch.backend import TorchBackend

    return TorchBackend()


def _fast_ops():
    from mixlight_torch.ops._sites import BUILTIN_OPS

    return BUILTIN_OPS


plugin = BackendPlugin(
    name="torch", framework="torch", extra="torch", load=_load, fast_ops=_fast_ops
)
