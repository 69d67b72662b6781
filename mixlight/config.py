"""Adapter configuration: routers, sites and the config that ties them together.

Every class here is a frozen attrs class, validated at construction, and round-trips exactly
through :meth:`AdapterConfig.to_dict` / :meth:`AdapterConfig.from_dict` (plain JSON types).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import attrs

from mixlight import _validate as v
from mixlight.experts import ExpertKind, expert_from_dict


@attrs.frozen
class SoftMerge:
    """Soft merging (the paper's default): softmax over all experts in float32.

    Auxiliary-loss weights default to 0 (the paper uses none with soft merging).
    """

    kind: ClassVar[str] = "soft_merge"
    load_balance_weight: float = attrs.field(default=0.0, validator=v.non_negative_float)
    z_loss_weight: float = attrs.field(default=0.0, validator=v.non_negative_float)

    @property
    def top_k(self) -> int | None:
        return None

    renormalize: ClassVar[bool] = True


@attrs.frozen
class TopK:
    """Keep the k most probable experts per token.

    ``renormalize=True`` rescales the kept probabilities to sum to 1; ``False`` reproduces the
    reference code's masked softmax (which shrinks a fresh MoV's output by about k/E).
    """

    kind: ClassVar[str] = "top_k"
    k: int = attrs.field(validator=v.int_at_least(1))
    renormalize: bool = attrs.field(default=True, validator=v.instance_of(bool, what="a bool"))
    load_balance_weight: float = attrs.field(default=0.0, validator=v.non_negative_float)
    z_loss_weight: float = attrs.field(default=0.0, validator=v.non_negative_float)

    def __attrs_post_init__(self) -> None:
        if self.k == 1 and self.renormalize:
            warnings.warn(
                "TopK(k=1, renormalize=True) gives the one kept expert probability exactly 1, "
                "so the task loss gives the router exactly zero gradient and it never learns; use "
                "TopK(1, renormalize=False) (the reference code's masked softmax) or k >= 2",
                UserWarning,
                stacklevel=3,
            )

    @property
    def top_k(self) -> int:
        return self.k


Router = SoftMerge | TopK
_ROUTERS: dict[str, type] = {"soft_merge": SoftMerge, "top_k": TopK}


def _router_from_dict(data: Mapping[str, Any]) -> Router:
    fields = dict(_mapping(data, "router"))
    name = fields.pop("kind", None)
    if name not in _ROUTERS:
        raise ValueError(f"unknown router kind {name!r}; allowed: {sorted(_ROUTERS)}")
    return _construct(_ROUTERS[name], fields, f"router {name!r}")


def _mapping(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__} {data!r}")
    return data


T = TypeVar("T", bound=attrs.AttrsInstance)


def _construct(cls: type[T], fields: dict[str, Any], what: str) -> T:
    """``cls(**fields)``, with missing or unknown keys reported as a ValueError naming them."""
    names = {f.name for f in attrs.fields(cls)}
    required = {f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING}
    missing, unknown = sorted(required - set(fields)), sorted(set(fields) - names)
    if missing or unknown:
        raise ValueError(
            f"{what}: "
            + "; ".join(
                ([f"missing keys {missing}"] if missing else [])
                + ([f"unknown keys {unknown}"] if unknown else [])
            )
            + f"; known keys: {sorted(names)}"
        )
    return cls(**fields)


def _to_dict(obj: Any) -> dict[str, Any]:
    return {"kind": obj.kind, **attrs.asdict(obj, recurse=False)}


def _check_heads(inst: Any, attribute: Any, value: Any) -> None:
    if value is None or value == "auto":
        return
    v.int_at_least(1)(inst, attribute, value)


def _check_width(inst: Any, attribute: Any, value: Any) -> None:
    if value is not None:
        v.int_at_least(1)(inst, attribute, value)


@attrs.frozen
class Site:
    """Where an adapter goes and what it does there.

    Attributes:
      pattern: regular expression matched against the *full* module path
        (``encoder.block.0.layer.0.SelfAttention.k``).
      expert: the expert kind (:class:`~mixlight.extend.Vectors`,
        :class:`~mixlight.extend.LowRank`, ...).
      router_input: ``"output"`` routes on the adapted tensor (MoV), ``"input"`` on the
        module's input (MoLoRA); None takes the expert kind's default.
      heads: per-head routing (router kernel ``[d_head, E]`` shared by all heads,
        probabilities ``[..., heads, E]``): an int, ``"auto"`` (the backend reads the
        attention module's heads: its output width over the attention's head width, so a
        grouped-query key/value projection has ``num_key_value_heads``; else its head count,
        e.g. HF T5's ``n_heads``), or None for one router over the whole width.
      tensor: which tensor of the matched module the expert adapts: ``"output"`` (the
        default: the module's output) or ``"input"`` (its input, before the module runs, as
        PEFT's (IA)³ ``feedforward_modules`` scale the input of a feed-forward layer's down
        projection). An input site needs a width-preserving expert kind (one that
        ``fits_activations``, such as :class:`~mixlight.extend.Vectors`) on a linear module; its
        parameters have the module's input width, and its router reads that input.
      width: the width of a parameterless activation module the site adapts, for one whose
        parent holds no linear layer that consumes its output (``wo``, ``fc2``,
        ``down_proj``, ...: the one that sizes it otherwise); None (the default) takes that
        consumer's input width. A width that disagrees with the module's is refused.
    """

    pattern: str = attrs.field(validator=v.regex)
    expert: ExpertKind = attrs.field(
        validator=v.instance_of(ExpertKind, what="an expert kind such as mixlight.extend.Vectors()")
    )
    router_input: str | None = attrs.field(
        default=None, validator=v.one_of((None, "output", "input"))
    )
    heads: int | str | None = attrs.field(default=None, validator=_check_heads)
    tensor: str = attrs.field(default="output", validator=v.one_of(("output", "input")))
    width: int | None = attrs.field(default=None, validator=_check_width)

    def __attrs_post_init__(self) -> None:
        if self.heads is not None and not self.expert.supports_heads:
            raise ValueError(
                f"Site(pattern={self.pattern!r}).heads={self.heads!r}: expert kind "
                f"{self.expert.kind!r} does not support per-head routing; use heads=None"
            )
        if self.tensor == "input" and not self.expert.fits_activations:
            raise ValueError(
                f"Site(pattern={self.pattern!r}, tensor='input'): expert kind "
                f"{self.expert.kind!r} is not width-preserving (its fits_activations is "
                "False), so it cannot adapt a module's input; use a kind such as "
                "mixlight.extend.Vectors(), or tensor='output'"
            )

    @property
    def reads(self) -> str:
        """Where the router reads: ``"output"`` or ``"input"``."""
        return self.router_input or self.expert.router_reads

    def to_dict(self) -> dict[str, Any]:
        out = {
            "pattern": self.pattern,
            "expert": self.expert.to_dict(),
            "router_input": self.router_input,
            "heads": self.heads,
        }
        if self.tensor != "output":  # written only when set: output sites stay as they were
            out["tensor"] = self.tensor
        if self.width is not None:  # likewise: files without a width read as before
            out["width"] = self.width
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Site:
        fields = dict(_mapping(data, "a site"))
        if "expert" in fields:
            fields["expert"] = expert_from_dict(_mapping(fields["expert"], "a site's expert"))
        return _construct(cls, fields, f"site {fields.get('pattern')!r}")


def _to_sites(value: Iterable[Site]) -> tuple[Site, ...]:
    return tuple(value)


def _check_sites(inst: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, tuple) or not value or not all(isinstance(s, Site) for s in value):
        raise ValueError(
            f"AdapterConfig.sites={value!r}: must be a non-empty sequence of mixlight.Site"
        )


@attrs.frozen
class AdapterConfig:
    """A whole adapter: its sites, expert count, router and routing input.

    Attributes:
      sites: where adapters go; each module path may match at most one site.
      num_experts: E. With E == 1 there is no router (IA3, LoRA).
      router: :class:`SoftMerge` or :class:`TopK`.
      routing: ``"token"`` (each token routes on its own representation) or ``"sequence"``
        (each sequence routes once on the masked mean of its router inputs; a site pools
        with its own sequence's padding mask: ``attention_mask`` for the encoder's sites and
        the cross-attention keys/values, ``decoder_attention_mask`` for the decoder's other
        sites; torch takes them from the model call, JAX from
        ``mixlight_jax.sequence_masks``).
      backend: pin a backend by name (else chosen by model type or ``$MIXLIGHT_BACKEND``).
      method: a label for summaries and files (``"MoV"``, ``"MoLoRA"``, ...).
      family_defaults: True for a preset made without ``targets=`` (``ml.MoV()``): its
        sites are the defaults of the model's family, chosen when the config is injected
        from the model's ``config.model_type`` (``docs/presets.md``); until then ``sites``
        holds the T5 layout (the sites of T5 models and of models without a model type).
        An injected model, and every file saved from it, carries the concrete sites
        (``family_defaults=False``). Not compared by ``==``: ``ml.MoV()`` equals the config
        it becomes in a T5.
    """

    sites: tuple[Site, ...] = attrs.field(converter=_to_sites, validator=_check_sites)
    num_experts: int = attrs.field(validator=v.int_at_least(1))
    router: Router = attrs.field(
        factory=SoftMerge,
        validator=v.instance_of(SoftMerge, TopK, what="mixlight.SoftMerge() or mixlight.TopK(k)"),
    )
    routing: str = attrs.field(default="token", validator=v.one_of(("token", "sequence")))
    backend: str | None = attrs.field(
        default=None, validator=v.instance_of(str, type(None), what="a backend name or None")
    )
    method: str = attrs.field(default="custom", validator=v.instance_of(str, what="a string"))
    family_defaults: bool = attrs.field(
        default=False, eq=False, validator=v.instance_of(bool, what="a bool")
    )

    def __attrs_post_init__(self) -> None:
        k = self.router.top_k
        if k is not None and k > self.num_experts:
            raise ValueError(
                f"TopK.k={k} exceeds AdapterConfig.num_experts={self.num_experts}: "
                f"k must be between 1 and num_experts"
            )

    @property
    def has_router(self) -> bool:
        return self.num_experts > 1

    def to_dict(self) -> dict[str, Any]:
        out = {
            "method": self.method,
            "num_experts": self.num_experts,
            "router": _to_dict(self.router),
            "routing": self.routing,
            "backend": self.backend,
            "sites": [s.to_dict() for s in self.sites],
        }
        if self.family_defaults:  # never in a file: injection makes the sites concrete
            out["family_defaults"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, allow_unknown: bool = False) -> AdapterConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are an error, or a warning (and ignored)
        with ``allow_unknown`` — used for files from a newer minor format version."""
        fields = dict(_mapping(data, "the adapter config"))
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            if not allow_unknown:
                raise ValueError(
                    f"unknown AdapterConfig keys {unknown}; known keys: {sorted(known)}"
                )
            warnings.warn(
                f"ignoring AdapterConfig keys {unknown} written by a newer mixlight",
                stacklevel=2,
            )
            for key in unknown:
                del fields[key]
        fields["router"] = _router_from_dict(fields.get("router", {"kind": "soft_merge"}))
        if "sites" in fields:
            if not isinstance(fields["sites"], (list, tuple)):
                raise ValueError(f"AdapterConfig sites must be a list, got {fields['sites']!r}")
            fields["sites"] = tuple(Site.from_dict(s) for s in fields["sites"])
        return _construct(cls, fields, "AdapterConfig")
