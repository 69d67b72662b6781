"""What one adapted module is: a :class:`SiteSpec`, the unit every backend applies.

Planning (:mod:`mixlight.site_planning`) makes them from a config and a model's modules; the
core math of one (:mod:`mixlight.site_math`) and the fast ops (:mod:`mixlight.fast_ops`) run
them; adapter files record their shapes.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from mixlight.config import Router, Site
from mixlight.experts import ExpertKind, ParamSpec

SOURCE, TARGET = "source", "target"
MASK_NAMES = {SOURCE: "attention_mask", TARGET: "decoder_attention_mask"}
"""The model-call keyword that carries each side's ``[batch, seq]`` padding mask."""


@attrs.frozen
class SiteSpec:
    """One adapted module: its path, its site, and the widths it was resolved with.

    ``side`` is the sequence its router input spans, which sequence routing pools with that
    sequence's padding mask (:data:`MASK_NAMES`): ``"source"`` (the model's input,
    ``attention_mask``) or ``"target"`` (an encoder-decoder's decoder sequence,
    ``decoder_attention_mask``); see :func:`sequence_side`.
    """

    path: str
    site: Site
    num_experts: int
    router: Router
    routing: str
    d_in: int
    d_out: int
    heads: int | None
    side: str = attrs.field(default=SOURCE, validator=attrs.validators.in_(tuple(MASK_NAMES)))

    @property
    def expert(self) -> ExpertKind:
        return self.site.expert

    @property
    def reads(self) -> str:
        return self.site.reads

    @property
    def has_router(self) -> bool:
        return self.num_experts > 1

    @property
    def d_route(self) -> int:
        width = self.d_out if self.reads == "output" else self.d_in
        return width // (self.heads or 1)

    def param_specs(self) -> dict[str, ParamSpec]:
        """Specs by short name (``vectors``, ``lora_A``, ``router``, ...)."""
        specs = dict(self.expert.param_specs(self.num_experts, self.d_in, self.d_out))
        if self.has_router:
            specs["router"] = ParamSpec(
                (self.d_route, self.num_experts), "normal", 0.02, ("embed", "expert")
            )
        return specs

    def canonical_name(self, short: str) -> str:
        return f"{self.path}.{short}"

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Fresh float32 parameters by short name."""
        return {name: spec.initialise(rng) for name, spec in self.param_specs().items()}

    def shape_entry(self) -> dict[str, Any]:
        """The base-model facts this site depends on, recorded in adapter files."""
        return {"d_in": self.d_in, "d_out": self.d_out, "heads": self.heads}
