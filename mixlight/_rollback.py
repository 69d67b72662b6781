"""Undo a failed load: a load that injects an adapter and then refuses the file (a shape that
does not fit, a bad value) must leave the model exactly as it was, or the next, correct load
meets an adapter it did not ask for."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from mixlight._backend_registry import AnyModelBackend
from mixlight.config import AdapterConfig
from mixlight.named_adapters import DEFAULT


@contextlib.contextmanager
def undone_on_failure(
    backend: AnyModelBackend, model: Any, adapter_name: str | None
) -> Iterator[None]:
    """On any exception in the block, take back what a load into ``model`` added: every
    adapter when the model had none before (un-injected), else the adapter ``adapter_name``
    when it is new; and which parameters train (the backend's ``snapshot_trainable``: torch's
    ``requires_grad``, which injection turns off for the base model). Adapters the model had
    before stay as they were; the block must validate values before it writes them into an
    existing adapter (the backends' ``load_adapter_state`` checks every array before it
    copies any)."""
    was_injected = backend.is_injected(model)
    is_new_name = adapter_name is not None and (
        not was_injected or adapter_name not in backend.adapter_names(model)
    )
    restore_trainable = backend.snapshot_trainable(model)
    try:
        yield
    except BaseException:
        if not was_injected and backend.is_injected(model):
            backend.remove_adapters(model)
        elif is_new_name and adapter_name in backend.adapter_names(model):
            backend.delete_adapter(model, adapter_name)
        restore_trainable()
        raise


def adds_adapter(backend: AnyModelBackend, model: Any, adapter_name: str | None) -> bool:
    """Whether loading into adapter ``adapter_name`` (None: the active one) adds it."""
    if not backend.is_injected(model):
        return True
    return adapter_name is not None and adapter_name not in backend.adapter_names(model)


@contextlib.contextmanager
def adapter_for_loading(
    backend: AnyModelBackend,
    model: Any,
    config: AdapterConfig,
    adapter_name: str | None,
    seed: int | None = 0,
) -> Iterator[None]:
    """Inject ``config`` as adapter ``adapter_name`` where the model lacks it, for the block
    to fill; all of it :func:`undone_on_failure`. ``seed`` 0 by default: a load replaces the
    values, so the framework's RNG is not drawn from."""
    with undone_on_failure(backend, model, adapter_name):
        if adds_adapter(backend, model, adapter_name):
            backend.inject(model, config, seed, adapter_name or DEFAULT)
        yield
