"""Entry point of the torch backend; importing this module does not import torch."""

from mixlight.extend import BackendPlugin


def _load():
    from mixlight_torch.backend import TorchBackend

    return TorchBackend()


plugin = BackendPlugin(name="torch", framework="torch", extra="torch", load=_load)
