"""The adapter layer: wraps a frozen module and applies the active adapter's routed mixture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from mixlight.extend import SiteSpec
from mixlight.fast_ops import FastOpVariant, resolve_fast_op, run_site
from mixlight.named_adapters import DEFAULT
from mixlight.site_math import pooling_mask
from mixlight_torch._plugin import plugin
from mixlight_torch.ops._precision import no_autocast


class AdapterSwitch:
    """Shared by all layers of one model (a plain object: no global state): which adapter
    runs, whether adapters run at all, per-example adapter names for a mixed batch, and the
    padding masks ``[batch, seq]`` captured from the model's last call for sequence routing,
    by side (``"source"``: ``attention_mask``, ``"target"``: ``decoder_attention_mask``)."""

    def __init__(self, active: str = DEFAULT) -> None:
        self.active = active
        self.enabled = True
        self.check_finite = False
        self.per_example: list[str] | None = None
        self.masks: dict[str, torch.Tensor] = {}


class AdapterLayer(nn.Module):
    """A frozen ``base`` module plus, per named adapter that targets it, one site's adapter
    parameters.

    ``forward(x)`` returns ``base(x)`` adapted by the active adapter (unchanged when the
    active adapter does not target this module): ``x [..., d_in] -> [..., d_out]``; a site
    with ``tensor="input"`` adapts ``x`` instead and returns ``base(adapted x)``.
    Parameters live in ``self.adapters[name]`` under their short canonical names (``router``,
    ``vectors``, ``lora_A``, ``lora_B``), float32; ``self.adapter`` and ``self.spec`` are the
    active adapter's. In ``state_dict()`` the base module's entries keep the names they had
    before injection (``...k.weight``, not ``...k.base.weight``), so a full checkpoint of an
    injected model still loads into the plain model (the adapter entries are then reported
    as unexpected keys). Attributes the base module has (``weight``, ``in_features``, ...)
    stay readable through the layer, as model code expects. The last forward's routing
    probabilities and logits are kept in ``last_probs`` and ``last_logits`` for
    :func:`mixlight.aux_losses` and :func:`mixlight.routing_stats`. What each adapter runs
    (its fast op's :class:`~mixlight.fast_ops.FastOpVariant`, None for the core math) is
    resolved once, when it is added, and kept in ``variants``.
    """

    def __init__(self, base: nn.Module, switch: AdapterSwitch) -> None:
        super().__init__()
        self.base = base
        self.switch = switch
        self.adapters = nn.ModuleDict()
        self.specs: dict[str, SiteSpec] = {}
        # On the meta device the initial values have nowhere to live: they are kept here and
        # written once the parameters get storage (``model.to_empty(device=...)``).
        self.__dict__["pending_init"] = {}
        self.__dict__["variants"] = {}  # adapter name -> FastOpVariant | None (core math)
        self.last_probs: torch.Tensor | None = None
        self.last_logits: torch.Tensor | None = None
        self.register_state_dict_post_hook(_base_keys_unprefixed)
        self.register_load_state_dict_pre_hook(_base_keys_prefixed)

    def add(
        self,
        name: str,
        spec: SiteSpec,
        params: dict[str, np.ndarray],
        near: nn.Module | None = None,
    ) -> None:
        """Give this module the adapter ``name`` with initial values ``params``, on its base
        module's device (``near``'s, for a base without parameters such as an activation)."""
        device = next(
            (p.device for m in (self.base, near or self.base) for p in m.parameters()),
            torch.device("cpu"),
        )
        self.adapters[name] = nn.ParameterDict(
            {n: nn.Parameter(torch.from_numpy(a).to(device)) for n, a in params.items()}
        )
        self.specs[name] = spec
        self.variants[name] = resolve_fast_op(spec, plugin.name)
        if device.type == "meta":
            self.__dict__["pending_init"][name] = params

    def remove(self, name: str) -> None:
        del self.adapters[name]
        del self.specs[name]
        del self.variants[name]
        self.__dict__["pending_init"].pop(name, None)

    variants: dict[str, FastOpVariant | None]  # (a plain attribute, kept out of nn.Module's)

    @property
    def spec(self) -> SiteSpec:
        """The active adapter's site (a ``KeyError`` naming it when this module has none)."""
        return self.specs[self.switch.active]

    @property
    def adapter(self) -> nn.ParameterDict:
        """The active adapter's parameters by short name."""
        return self.params_of(self.switch.active)

    def params_of(self, name: str) -> nn.ParameterDict:
        """Adapter ``name``'s parameters by short name."""
        return cast(nn.ParameterDict, self.adapters[name])  # add() puts only these there

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base":
                raise
            return getattr(self.base, name)

    def materialize(self) -> None:
        """Write the initial values kept from a meta-device injection into the parameters,
        once they have storage (after ``to_empty``); a no-op otherwise."""
        pending = self.__dict__["pending_init"]
        for name in list(pending):
            params = self.params_of(name)
            if any(p.is_meta for p in params.values()):
                continue
            with torch.no_grad():
                for short, param in params.items():
                    param.copy_(torch.from_numpy(pending[name][short]))
            del pending[name]

    def mark_loaded(self, name: str) -> None:
        """Adapter ``name`` now holds loaded values: forget its pending initial ones."""
        self.__dict__["pending_init"].pop(name, None)

    def load_later(self, name: str, values: dict[str, np.ndarray]) -> bool:
        """While adapter ``name`` is on the meta device, keep ``values`` (by short name) to
        write once it has storage, as initial values are kept; False when it has storage."""
        if not any(p.is_meta for p in self.params_of(name).values()):
            return False
        self.__dict__["pending_init"][name] = values
        return True

    def _apply(self, fn: Any, recurse: bool = True) -> AdapterLayer:
        # ``to_empty``/``to`` pass through here: meta-injected adapters get their values now.
        super()._apply(fn, recurse)
        self.materialize()
        return self

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        switch = self.switch
        if not switch.enabled or switch.per_example is not None or switch.active not in self.specs:
            # No routing of the active adapter ran: no statistics from this pass.
            self.__dict__.update(last_probs=None, last_logits=None)
            if switch.enabled and switch.per_example is not None:
                names = switch.per_example
                x_in = self._mixed_batch(x, x, names, "input")
                return self._mixed_batch(x, self.base(x_in, *args, **kwargs), names, "output")
            return self.base(x, *args, **kwargs)
        if self.specs[switch.active].site.tensor == "input":
            # The expert adapts the module's input (x is also the tensor it scales and routes
            # on), and the module runs on the adapted input.
            if switch.check_finite:
                self._check_finite(x, x)
            with no_autocast(x):
                x_in, probs, logits = self.mix(switch.active, x, x, switch.masks)
            self._keep_routing(probs, logits)
            return self.base(x_in, *args, **kwargs)
        h = self.base(x, *args, **kwargs)
        if switch.check_finite:
            self._check_finite(x, h)
        # Autocast off: routers stay float32; mixing runs in the activations' own dtypes.
        with no_autocast(h):
            out, probs, logits = self.mix(switch.active, x, h, switch.masks)
        self._keep_routing(probs, logits)
        return out

    def _keep_routing(self, probs: torch.Tensor | None, logits: torch.Tensor | None) -> None:
        if probs is not None and probs.numel() == 0:  # 0 tokens: nothing routed, no statistics
            probs = logits = None
        # (plain attributes: nn.Module.__setattr__ is measurable per generated token)
        self.__dict__.update(last_probs=probs, last_logits=logits)

    def _mixed_batch(
        self, x: torch.Tensor, h: torch.Tensor, names: Sequence[str], tensor: str = "output"
    ) -> torch.Tensor:
        """Each example (row of dim 0) adapted by its own adapter; ``names[i]`` is example
        ``i``'s adapter (``"__base__"``: none). A batch ``k`` times as long as ``names`` (beam
        search, ``num_return_sequences``) repeats each name ``k`` times, as ``generate``
        repeats the examples. Only the sites that adapt ``tensor`` (``"output"``: ``h`` is the
        module's output; ``"input"``: ``h`` is ``x``, the input the module then runs on) run."""
        rows = x.shape[0]
        if rows % len(names):
            raise ValueError(
                f"{self.spec_path()}: a batch of {rows} examples cannot take the "
                f"{len(names)} adapter names given; give one name per example"
            )
        repeat = rows // len(names)
        out = h
        for name in dict.fromkeys(names):
            if name not in self.specs:  # the base model, or an adapter not targeting this module
                continue
            if self.specs[name].site.tensor != tensor:
                continue
            index = torch.tensor(
                [i * repeat + j for i, n in enumerate(names) if n == name for j in range(repeat)],
                device=x.device,
            )
            masks = {
                side: m.index_select(0, index) if m.shape[0] == rows else m
                for side, m in self.switch.masks.items()
            }
            with no_autocast(h):
                part, _, _ = self.mix(
                    name, x.index_select(0, index), h.index_select(0, index), masks
                )
            out = out.index_copy(0, index, part.to(out.dtype))
        return out

    def spec_path(self) -> str:
        return next(iter(self.specs.values())).path if self.specs else type(self.base).__name__

    def _check_finite(self, x: torch.Tensor, h: torch.Tensor) -> None:
        for name, t in (("input", x), ("base-module output", h)):
            if not torch.isfinite(t).all():
                raise FloatingPointError(
                    f"{self.spec_path()}: non-finite values (NaN/inf) in the {name} of this "
                    f"adapted {type(self.base).__name__}"
                )

    def mix(
        self,
        name: str,
        x: torch.Tensor,
        h: torch.Tensor,
        masks: Mapping[str, torch.Tensor] | None = None,
    ):
        """``(out, probs, logits)`` of adapter ``name``, as its variant resolved when it was
        added runs it (:func:`mixlight.fast_ops.run_site`: its fast op, or the core math);
        ``masks`` by side, for sequence routing (:func:`mixlight.extend.pooling_mask`)."""
        spec, params = self.specs[name], self.params_of(name)
        mask = pooling_mask(spec, masks or {}, h if spec.reads == "output" else x)
        tensors = cast(Mapping[str, torch.Tensor], params)  # (a ParameterDict reads as one)
        return run_site(self.variants[name], spec, tensors, x, h, mask)

    def extra_repr(self) -> str:
        def one(s: SiteSpec) -> str:
            heads = f", heads={s.heads}" if s.heads else ""
            return (
                f"{s.expert.kind}, experts={s.num_experts}, d_in={s.d_in}, d_out={s.d_out}{heads}"
            )

        if list(self.specs) == [self.switch.active]:
            return one(self.spec)
        return "; ".join(f"{name}: {one(s)}" for name, s in self.specs.items())


def _base_keys_unprefixed(module: AdapterLayer, state: dict, prefix: str, meta: Any) -> None:
    """``state_dict`` post-hook: ``<prefix>base.<key>`` -> ``<prefix><key>``."""
    inner = prefix + "base."
    for key in [k for k in state if k.startswith(inner)]:
        state[prefix + key[len(inner) :]] = state.pop(key)


def _base_keys_prefixed(module: AdapterLayer, state: dict, prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook, the inverse of :func:`_base_keys_unprefixed` (keys
    under ``base.`` or ``adapters.`` are in the layer's own layout already)."""
    ours = (prefix + "base.", prefix + "adapters.")
    for key in [k for k in state if k.startswith(prefix) and not k.startswith(ours)]:
        state[prefix + "base." + key[len(prefix) :]] = state.pop(key)
