"""Expert kinds: what one expert's parameters are and how a routed mixture of them applies.

An expert kind is a frozen attrs class registered with :func:`register_expert`. It declares
its parameters with :class:`ParamSpec` (canonical name, shape, initialiser, logical axes) and
its mixing rule with the core's einops math, so every backend runs it without backend code.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mixlight import _validate as v
from mixlight.math import lowrank_mixture, merge_vectors, mix_vectors


@attrs.frozen
class ParamSpec:
    """One adapter parameter of one site.

    ``init`` is ``"ones"``, ``"zeros"`` or ``"normal"`` (mean 0, standard deviation ``std``).
    ``axes`` names each dimension for sharding: ``expert``, ``embed``, ``mlp``, ``rank``, ...
    """

    shape: tuple[int, ...]
    init: str = attrs.field(validator=v.one_of(("ones", "zeros", "normal")))
    std: float = 0.0
    axes: tuple[str, ...] = ()

    def initialise(self, rng: np.random.Generator) -> np.ndarray:
        """A float32 numpy array drawn from this spec."""
        if self.init == "ones":
            return np.ones(self.shape, np.float32)
        if self.init == "zeros":
            return np.zeros(self.shape, np.float32)
        return (rng.standard_normal(self.shape) * self.std).astype(np.float32)


@attrs.frozen
class Merged:
    """One site's adapter folded into its frozen module at a fixed routing, float32: the
    module's output ``h`` becomes ``h * scale`` (``scale [d_out]``) and/or
    ``h + x @ delta`` (``delta [d_in, d_out]``)."""

    scale: np.ndarray | None = None
    delta: np.ndarray | None = None


class ExpertKind(abc.ABC):
    """Base class of expert kinds. Subclasses are frozen attrs classes.

    Class attributes:
      kind: the registry name used in configs and adapter files.
      router_reads: ``"output"`` (route on the adapted tensor, as MoV) or ``"input"``
        (route on the site's input, as MoLoRA), the default for sites of this kind.
      supports_heads: whether :meth:`mix` accepts per-head probabilities ``[..., H, E]``.
      fits_activations: True when the kind only needs the output width, so it may wrap a
        parameterless activation module (input and output of the same width).
    """

    kind: ClassVar[str] = ""
    router_reads: ClassVar[str] = "output"
    supports_heads: ClassVar[bool] = False
    fits_activations: ClassVar[bool] = False

    @abc.abstractmethod
    def param_specs(self, num_experts: int, d_in: int, d_out: int) -> dict[str, ParamSpec]:
        """Parameter specs keyed by their short canonical name (``vectors``, ``lora_A``)."""

    @abc.abstractmethod
    def mix(
        self,
        params: Mapping[str, Any],
        probs: Any | None,
        x: Any,
        h: Any,
        heads: int | None,
    ) -> Any:
        """The adapted output.

        Args:
          params: this site's parameters by short name, shapes from :meth:`param_specs`.
          probs: routing probabilities ``[..., E]`` (``[..., H, E]`` per head), float32;
            None for a one-expert, router-less site.
          x: the site's input ``[..., d_in]``.
          h: the frozen module's output ``[..., d_out]``.
          heads: number of heads for per-head probabilities, else None.
        Returns:
          ``[..., d_out]`` in ``h``'s dtype.
        """

    def merged(self, params: Mapping[str, Any], probs: Any | None, heads: int | None) -> Merged:
        """This kind's adapter as a :class:`Merged` update at fixed routing ``probs`` (``[E]``,
        ``[H, E]`` per head, None for one expert), numpy in and out. Kinds whose output is not
        ``h * s`` or ``h + x @ D`` for fixed probabilities cannot be merged; they keep this
        error."""
        raise TypeError(
            f"expert kind {self.kind!r} has no merge rule: keep the adapter unmerged, or give "
            f"{type(self).__name__} a merged(params, probs, heads) returning mixlight.extend.Merged"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **attrs.asdict(self, recurse=False)}  # type: ignore[arg-type]


_EXPERTS: dict[str, type[ExpertKind]] = {}


def register_expert(cls: type[ExpertKind]) -> type[ExpertKind]:
    """Make an expert kind available by ``cls.kind`` in configs and adapter files.

    Usable as a class decorator. Re-registering the same class is a no-op; another class
    under a taken name is an error.
    """
    is_attrs_class = attrs.has(cls)  # (a plain bool: attrs.has would narrow cls for mypy)
    if not (isinstance(cls, type) and issubclass(cls, ExpertKind) and is_attrs_class):
        raise TypeError(
            f"register_expert({cls!r}): expected an attrs class subclassing "
            "mixlight.extend.ExpertKind"
        )
    if not cls.kind or not cls.kind.isidentifier():
        raise ValueError(f"{cls.__name__}.kind={cls.kind!r}: must be a non-empty identifier")
    if cls.router_reads not in ("output", "input"):
        raise ValueError(
            f"{cls.__name__}.router_reads={cls.router_reads!r}: allowed 'output', 'input'"
        )
    taken = _EXPERTS.get(cls.kind)
    if taken is not None and taken is not cls:
        raise ValueError(
            f"expert kind {cls.kind!r} is already registered by {taken.__module__}.{taken.__name__}"
        )
    _EXPERTS[cls.kind] = cls
    return cls


def expert_kinds() -> dict[str, type[ExpertKind]]:
    """Registered expert kinds by name."""
    return dict(_EXPERTS)


def expert_from_dict(data: Mapping[str, Any]) -> ExpertKind:
    """Rebuild an expert kind from :meth:`ExpertKind.to_dict` output."""
    fields = dict(data)
    name = fields.pop("kind", None)
    if name not in _EXPERTS:
        raise ValueError(
            f"unknown expert kind {name!r}; registered kinds: {sorted(_EXPERTS)} "
            "(register a custom kind with mixlight.extend.register_expert before loading)"
        )
    return _EXPERTS[name](**fields)


@register_expert
@attrs.frozen
class Vectors(ExpertKind):
    """(IA)³ scaling vectors: ``h * (probs @ vectors)``; MoV when E > 1. Vectors start at one."""

    kind: ClassVar[str] = "vectors"
    router_reads: ClassVar[str] = "output"
    supports_heads: ClassVar[bool] = True
    fits_activations: ClassVar[bool] = True

    def param_specs(self, num_experts: int, d_in: int, d_out: int) -> dict[str, ParamSpec]:
        return {"vectors": ParamSpec((num_experts, d_out), "ones", axes=("expert", "embed"))}

    def mix(
        self, params: Mapping[str, Any], probs: Any | None, x: Any, h: Any, heads: int | None
    ) -> Any:
        return mix_vectors(h, probs, params["vectors"], heads)

    def merged(self, params: Mapping[str, Any], probs: Any | None, heads: int | None) -> Merged:
        return Merged(scale=np.asarray(merge_vectors(probs, params["vectors"], heads)))


@register_expert
@attrs.frozen
class LowRank(ExpertKind):
    """LoRA experts: ``h + alpha/rank * sum_e p_e (x @ A_e) @ B_e``; MoLoRA when E > 1.

    A ~ N(0, 0.02), B = 0, so a fresh adapter leaves the model unchanged.
    """

    kind: ClassVar[str] = "low_rank"
    router_reads: ClassVar[str] = "input"

    rank: int = attrs.field(validator=v.int_at_least(1))
    alpha: float = attrs.field(default=16.0, validator=v.positive_float)

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def param_specs(self, num_experts: int, d_in: int, d_out: int) -> dict[str, ParamSpec]:
        return {
            "lora_A": ParamSpec(
                (num_experts, d_in, self.rank), "normal", 0.02, ("expert", "embed", "rank")
            ),
            "lora_B": ParamSpec(
                (num_experts, self.rank, d_out), "zeros", axes=("expert", "rank", "mlp")
            ),
        }

    def mix(
        self, params: Mapping[str, Any], probs: Any | None, x: Any, h: Any, heads: int | None
    ) -> Any:
        return h + lowrank_mixture(x, probs, params["lora_A"], params["lora_B"], self.scale, h)

    def merged(self, params: Mapping[str, Any], probs: Any | None, heads: int | None) -> Merged:
        lora_A, lora_B = np.asarray(params["lora_A"]), np.asarray(params["lora_B"])
        identity = np.eye(lora_A.shape[1], dtype=np.float32)  # x = I: the rows of delta
        return Merged(delta=lowrank_mixture(identity, probs, lora_A, lora_B, self.scale))
