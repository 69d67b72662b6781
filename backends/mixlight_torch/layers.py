"""The adapter layer: wraps a frozen module and applies one site's routed mixture."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mixlight import LowRank, SiteSpec, Vectors, apply_site
from mixlight.site_spec import route, select_mask
from mixlight_torch._router import no_autocast
from mixlight_torch.fused import fused_molora, fused_mov, fused_routed_molora


class AdapterSwitch:
    """Shared by all layers of one model: adapters on/off and the sequence-routing masks
    captured from the model's last call (plain object: no global state)."""

    def __init__(self) -> None:
        self.enabled = True
        self.check_finite = False
        self.masks: list[torch.Tensor] = []


class AdapterLayer(nn.Module):
    """A frozen ``base`` module plus one site's adapter parameters.

    ``forward(x)`` returns the adapted ``base(x)``: ``x [..., d_in] -> [..., d_out]``.
    Parameters live in ``self.adapter`` under their short canonical names (``router``,
    ``vectors``, ``lora_A``, ``lora_B``), float32. Attributes the base module has (``weight``,
    ``in_features``, ...) stay readable through the layer, as model code expects.
    The last forward's routing probabilities and logits are kept in ``last_probs`` and
    ``last_logits`` for :func:`mixlight.aux_losses` and :func:`mixlight.routing_stats`.
    """

    def __init__(
        self, base: nn.Module, spec: SiteSpec, params: dict[str, np.ndarray], switch: AdapterSwitch
    ) -> None:
        super().__init__()
        self.base = base
        self.spec = spec
        self.switch = switch
        device = next((p.device for p in base.parameters()), torch.device("cpu"))
        self.adapter = nn.ParameterDict(
            {n: nn.Parameter(torch.from_numpy(a).to(device)) for n, a in params.items()}
        )
        # On the meta device the initial values have nowhere to live: they are kept here and
        # written once the parameters get storage (``model.to_empty(device=...)``).
        self.__dict__["pending_init"] = params if device.type == "meta" else None
        self.last_probs: torch.Tensor | None = None
        self.last_logits: torch.Tensor | None = None

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
        pending = self.__dict__.get("pending_init")
        if pending is None or any(p.is_meta for p in self.adapter.values()):
            return
        with torch.no_grad():
            for name, param in self.adapter.items():
                param.copy_(torch.from_numpy(pending[name]))
        self.__dict__["pending_init"] = None

    def mark_loaded(self) -> None:
        """The parameters now hold loaded values: forget the pending initial ones."""
        self.__dict__["pending_init"] = None

    def _apply(self, fn: Any, recurse: bool = True) -> AdapterLayer:
        # ``to_empty``/``to`` pass through here: meta-injected adapters get their values now.
        super()._apply(fn, recurse)
        self.materialize()
        return self

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        h = self.base(x, *args, **kwargs)
        if not self.switch.enabled:  # no routing ran: no statistics from this pass
            self.__dict__.update(last_probs=None, last_logits=None)
            return h
        if self.switch.check_finite:
            self._check_finite(x, h)
        # Autocast off: routers stay float32; mixing runs in the activations' own dtypes.
        with no_autocast(h):
            out, probs, logits = self.mix(x, h)
        if probs is not None and probs.numel() == 0:  # 0 tokens: nothing routed, no statistics
            probs = logits = None
        # (plain attributes: nn.Module.__setattr__ is measurable per generated token)
        self.__dict__.update(last_probs=probs, last_logits=logits)
        return out

    def _check_finite(self, x: torch.Tensor, h: torch.Tensor) -> None:
        for name, t in (("input", x), ("base-module output", h)):
            if not torch.isfinite(t).all():
                raise FloatingPointError(
                    f"{self.spec.path}: non-finite values (NaN/inf) in the {name} of this "
                    f"adapted {type(self.base).__name__}"
                )

    def mix(self, x: torch.Tensor, h: torch.Tensor):
        """``(out, probs, logits)``: the fused path where one applies, else the core math."""
        spec, p = self.spec, self.adapter
        token = spec.routing == "token"
        if isinstance(spec.expert, Vectors) and spec.reads == "output" and token:
            if not spec.has_router:
                return h * p["vectors"][0].to(h.dtype), None, None
            return fused_mov(
                h, p["router"], p["vectors"], spec.heads, spec.router.top_k, spec.router.renormalize
            )
        if isinstance(spec.expert, LowRank) and token:
            lora = (p["lora_A"], p["lora_B"], spec.expert.scale)
            if spec.has_router and spec.reads == "input" and not spec.heads:
                r = spec.router
                return fused_routed_molora(x, p["router"], *lora, r.top_k, r.renormalize, base=h)
            probs = logits = None
            if spec.has_router:
                probs, logits = route(spec, p["router"], h if spec.reads == "output" else x)
            return fused_molora(x, probs, *lora, base=h), probs, logits
        route_in = h if spec.reads == "output" else x
        mask = select_mask(self.switch.masks, route_in) if spec.routing == "sequence" else None
        result = apply_site(spec, dict(p.items()), x, h, mask)
        return result.out, result.probs, result.logits

    def extra_repr(self) -> str:
        s = self.spec
        heads = f", heads={s.heads}" if s.heads else ""
        return f"{s.expert.kind}, experts={s.num_experts}, d_in={s.d_in}, d_out={s.d_out}{heads}"
