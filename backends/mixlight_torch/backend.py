"""The torch implementation of :class:`mixlight.extend.Backend`: every hook of the contract,
including the optional capabilities (one adapter per example, the T5 loader)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mixlight import AdapterConfig, ParameterCount
from mixlight._backend_contract import Backend, RoutingStats
from mixlight._base_identity import BaseIdentity
from mixlight.adapter_file import check_arrays
from mixlight.math import routing_summary
from mixlight.site_spec import SiteSpec
from mixlight_torch import merge as _merge
from mixlight_torch import model as _model
from mixlight_torch.primitives import TORCH_PRIMITIVES


class TorchBackend(Backend[nn.Module, torch.Tensor]):
    name = "torch"
    primitives = TORCH_PRIMITIVES
    array_types = (torch.Tensor, nn.Parameter)

    def owns_array(self, x: object) -> bool:
        return isinstance(x, torch.Tensor)

    def owns_model(self, model: object) -> bool:
        return isinstance(model, nn.Module)

    def is_injected(self, model: nn.Module) -> bool:
        return "mixlight_state" in _model.unwrap(model).__dict__

    def inject(
        self,
        model: nn.Module,
        config: AdapterConfig,
        seed: int | None = None,
        name: str = _model.DEFAULT,
    ) -> nn.Module:
        return _model.inject(model, config, seed, name)

    def plan(self, model: nn.Module, config: AdapterConfig) -> list[SiteSpec]:
        return _model.plan(_model.unwrap(model), config)

    def resolve_config(self, model: nn.Module, config: AdapterConfig) -> AdapterConfig:
        """``config`` with the sites it gets in ``model`` (a preset's family defaults made
        concrete from the model's ``config.model_type``)."""
        return _model.resolve_config(_model.unwrap(model), config)

    def adapter_names(self, model: nn.Module) -> list[str]:
        return _model.state_of(_model.unwrap(model)).adapters.names()

    def set_adapter(self, model: nn.Module, name: str) -> None:
        _model.set_adapter(_model.unwrap(model), name)

    def delete_adapter(self, model: nn.Module, name: str) -> None:
        _model.delete_adapter(_model.unwrap(model), name)

    def remove_adapters(self, model: nn.Module) -> nn.Module:
        return _model.remove_adapters(_model.unwrap(model))

    def adapter_per_example(
        self, model: nn.Module, names: Sequence[str]
    ) -> contextlib.AbstractContextManager[nn.Module]:
        return _model.adapter_per_example(_model.unwrap(model), list(names))

    def adapter_specs(
        self, model: nn.Module, name: str | None = None
    ) -> tuple[AdapterConfig, list[SiteSpec]]:
        return _model.state_of(_model.unwrap(model)).adapters.get(name)

    def adapter_state(
        self, model: nn.Module, name: str | None = None
    ) -> tuple[AdapterConfig, list[SiteSpec], dict[str, np.ndarray]]:
        model = _model.unwrap(model)
        config, specs = self.adapter_specs(model, name)
        _model.materialize(model, "save the adapter", name)
        arrays = {}
        for key, p in _model.adapter_parameters(model, name):
            if _is_dtensor(p):
                raise ValueError(
                    f"{key} is sharded (DTensor): gathering needs every rank, so save with "
                    "mixlight_torch.distributed.save_adapter_distributed(model, directory) "
                    "called on all ranks"
                )
            arrays[key] = p.detach().to("cpu", torch.float32).numpy().copy()
        return config, specs, arrays

    def load_adapter_state(
        self, model: nn.Module, arrays: Mapping[str, np.ndarray], name: str | None = None
    ) -> None:
        model = _model.unwrap(model)
        check_arrays(self.adapter_specs(model, name)[1], arrays, "adapter arrays")
        adapter = name or _model.state_of(model).active
        for layer in _model.adapter_layers(model, adapter).values():
            spec = layer.specs[adapter]
            values = {
                s: np.asarray(arrays[spec.canonical_name(s)]) for s in layer.params_of(adapter)
            }
            if not layer.load_later(adapter, values):  # meta: written on ``to_empty``
                _copy_into(layer.params_of(adapter), values)
                layer.mark_loaded(adapter)

    def merge_and_unload(
        self, model: nn.Module, routing: Mapping[str, np.ndarray] | None = None
    ) -> nn.Module:
        return _merge.merge_and_unload(model, routing)

    def mean_routing(
        self, model: nn.Module, batches: Iterable[Mapping[str, Any]]
    ) -> dict[str, np.ndarray]:
        return _merge.mean_routing(model, batches)

    def base_identity(self, model: nn.Module, name: str | None = None) -> BaseIdentity:
        return _model.base_identity(_model.unwrap(model), name)

    def load_model(self, path: str) -> nn.Module:
        """The HF transformers T5 of a checkpoint directory (``ml.load_model``), in eval mode."""
        try:
            import transformers
        except ImportError:
            raise ImportError(
                'loading a T5 checkpoint in torch needs transformers: pip install "mixlight[t5]"'
            ) from None
        return transformers.T5ForConditionalGeneration.from_pretrained(path).eval()

    def snapshot_trainable(self, model: nn.Module) -> Callable[[], None]:
        """Each parameter's ``requires_grad`` now; the function returned puts them back."""
        flags = [(p, p.requires_grad) for p in model.parameters()]

        def restore() -> None:
            for parameter, trainable in flags:
                parameter.requires_grad_(trainable)

        return restore

    def trainable_parameters(self, model: nn.Module) -> ParameterCount:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return ParameterCount(trainable, sum(p.numel() for p in model.parameters()))

    def aux_losses(self, model: nn.Module) -> torch.Tensor:
        model = _model.unwrap(model)
        _model.state_of(model)
        return _model.aux_loss(model)

    def routing_stats(self, model: nn.Module) -> RoutingStats:
        model = _model.unwrap(model)
        _model.state_of(model)
        return {
            path: routing_summary(layer.last_probs.detach().float().cpu().numpy())
            for path, layer in _model.adapter_layers(model).items()
            if layer.last_probs is not None
        }

    @contextlib.contextmanager
    def disable_adapters(self, model: nn.Module) -> Iterator[nn.Module]:
        switch = _model.state_of(_model.unwrap(model)).switch
        previous, switch.enabled = switch.enabled, False
        try:
            yield model
        finally:
            switch.enabled = previous


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def _copy_into(params: nn.ParameterDict, values: Mapping[str, np.ndarray]) -> None:
    """Copy ``values`` (by short name) into ``params``; an FSDP2 (DTensor) parameter takes
    its own rank's slice."""
    with torch.no_grad():
        for short, param in params.items():
            full = torch.from_numpy(values[short]).to(param.device, param.dtype)
            if _is_dtensor(param):
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(
                    full, param.device_mesh, param.placements, src_data_rank=None
                )
            param.copy_(full)
