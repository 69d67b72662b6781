"""Site planning on plain data: a config's sites matched against a model's modules.

Backends list their modules once, as plain data (:class:`ModuleRecord`); the core matches
patterns, checks shapes and resolves one :class:`~mixlight.site_spec.SiteSpec` per adapted
module (:func:`plan_sites`), so every backend shares one implementation of the rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs

from mixlight.config import AdapterConfig, Site
from mixlight.site_spec import SOURCE, TARGET, SiteSpec


@attrs.frozen
class ModuleShape:
    """What a backend reports about a matched module: input and output widths, and its head
    count when it belongs to an attention layer (used by ``Site(heads="auto")``)."""

    d_in: int
    d_out: int
    heads: int | None = None


HEAD_COUNT_ATTRS = ("n_heads", "num_heads", "num_attention_heads", "n_head")
# The width of one head (HF Llama-style and GPT-2 ``head_dim``, GPT-NeoX ``head_size``, BERT
# ``attention_head_size``, T5 ``key_value_proj_dim``): a projection's heads are its output
# width over it, so a grouped-query key/value projection has ``num_key_value_heads``.
HEAD_WIDTH_ATTRS = ("head_dim", "head_size", "attention_head_size", "key_value_proj_dim")
# Siblings whose input is an activation's output, to size parameterless activation modules.
ACTIVATION_CONSUMERS = ("wo", "fc2", "down_proj", "c_proj", "dense_4h_to_h", "output")


@attrs.frozen
class ModuleRecord:
    """What a backend reports about one module of a model, as plain data, before any pattern
    is matched, so that site planning (:func:`plan_sites`) runs on data alone.

    Attributes:
      type_name: the module's class name, for errors.
      d_in, d_out: the widths of a linear-like module; None for anything else.
      heads: the heads of its output when an attention holds it: the output width over the
        attention's head width (:data:`HEAD_WIDTH_ATTRS`; for a grouped-query key/value
        projection, the key/value head count), else the attention's head count.
      has_params: whether the module holds parameters.
      consumer_in: the input width of the linear sibling its output feeds (``wo``, ``fc2``,
        ``c_proj``, ...), which sizes a parameterless activation.
      refusal: why it cannot be adapted (e.g. it is a PEFT layer); raised as a
        ``TypeError`` if a site matches it.
    """

    type_name: str
    d_in: int | None = None
    d_out: int | None = None
    heads: int | None = None
    has_params: bool = False
    consumer_in: int | None = None
    refusal: str | None = None


def record_module(
    module: Any,
    parent: Any,
    width: Callable[[Any, str], int | None],
    has_params: Callable[[Any], bool],
    refusal: str | None = None,
) -> ModuleRecord:
    """The shared rules by which a backend records ``module`` (held by ``parent``).

    ``width(module, "in" | "out")`` is the backend's width of a linear-like module (None for
    anything else, including None); ``has_params(module)`` whether it holds parameters. The
    head count comes from the parent (``n_heads``, ``num_heads``, ...); a parameterless module
    records the input width of the first sibling in :data:`ACTIVATION_CONSUMERS` it has.
    A linear module's heads are its output width over the parent's head width
    (:data:`HEAD_WIDTH_ATTRS`) when that divides it: grouped-query attention's ``k_proj`` and
    ``v_proj`` have ``num_key_value_heads`` heads (stored flat and head-major, ``d =
    kv_heads * head_dim``), a fused ``qkv`` projection one per query, key and value head.
    """
    heads = next(
        (
            int(getattr(parent, a))
            for a in HEAD_COUNT_ATTRS
            if isinstance(getattr(parent, a, None), int)
        ),
        None,
    )
    d_out = width(module, "out")
    head_width = next(
        (w for a in HEAD_WIDTH_ATTRS if type(w := getattr(parent, a, None)) is int and w > 0),
        None,
    )
    if head_width is not None and d_out is not None and d_out % head_width == 0:
        heads = d_out // head_width
    params = has_params(module)
    consumer = None
    if not params:
        widths = (width(getattr(parent, s, None), "in") for s in ACTIVATION_CONSUMERS)
        consumer = next((w for w in widths if w is not None), None)
    return ModuleRecord(
        type(module).__name__,
        width(module, "in"),
        d_out,
        heads,
        params,
        consumer,
        refusal,
    )


def shape_for(path: str, site: Site, record: ModuleRecord) -> ModuleShape:
    """The :class:`ModuleShape` with which ``site`` adapts the recorded module at ``path``;
    a ``TypeError`` naming the path, the type and the fix when it cannot."""
    if record.refusal is not None:
        raise TypeError(record.refusal)
    if site.tensor == "input":
        if record.d_in is None:
            raise TypeError(
                f"Site {site.pattern!r} (tensor='input') matched {path} of type "
                f"{record.type_name}, whose input width mixlight cannot tell; an input site "
                "adapts the input of a linear layer: narrow the pattern to such layers"
            )
        _site_width(path, site, record.d_in, "its input width")
        return ModuleShape(record.d_in, record.d_in)  # the adapted tensor is the input
    if record.d_in is not None and record.d_out is not None:
        _site_width(path, site, record.d_out, "its output width")
        return ModuleShape(record.d_in, record.d_out, record.heads)
    if site.expert.fits_activations and not record.has_params:
        width = _site_width(path, site, record.consumer_in, "its consumer's input width")
        if width is None:
            raise TypeError(
                f"cannot tell the width of activation module {path} ({record.type_name}): its "
                f"parent has none of {list(ACTIVATION_CONSUMERS)} as a linear layer; give "
                f"the site its width (Site({site.pattern!r}, ..., width=N)) or target a "
                "linear layer instead"
            )
        return ModuleShape(width, width, record.heads)
    kinds = "linear" + (" or parameterless activation" if site.expert.fits_activations else "")
    raise TypeError(
        f"Site {site.pattern!r} matched {path} of type {record.type_name}; expert kind "
        f"{site.expert.kind!r} adapts {kinds} modules: narrow the pattern to such modules"
    )


def _site_width(path: str, site: Site, known: int | None, what: str) -> int | None:
    """The adapted tensor's width: ``known`` (the module's own), else the site's ``width``;
    a ``TypeError`` when both are given and differ."""
    if site.width is not None and known is not None and site.width != known:
        raise TypeError(
            f"Site {site.pattern!r} gives width={site.width}, but {path} has {what} {known}; "
            "drop width= (the module's own width is used) or match it"
        )
    return known if known is not None else site.width


def describe_module(
    path: str,
    site: Site,
    module: Any,
    parent: Any,
    width: Callable[[Any, str], int | None],
    has_params: Callable[[Any], bool],
) -> ModuleShape:
    """:func:`shape_for` of :func:`record_module`, for one matched module (the callback form
    of :func:`plan_sites`)."""
    return shape_for(path, site, record_module(module, parent, width, has_params))


# Cross-attention keys/values read the encoder's output, so they sit on the source side.
_CROSS_ATTENTION_KV = re.compile(r"(?:.*\.)?(?:EncDecAttention\.[kv]|encoder_attn\.[kv]_proj)")


def plan_sites(
    config: AdapterConfig,
    modules: Mapping[str, ModuleRecord | ModuleShape],
    *,
    input_sites: bool = False,
) -> list[SiteSpec]:
    """Match the config's sites against a model's modules.

    ``modules`` maps every module path to its :class:`ModuleRecord` (or its
    :class:`ModuleShape`): the backend lists its model once, as data, and planning needs
    nothing more from it. A backend that applies ``Site(tensor="input")`` (the expert runs on
    the module's input, before the module) passes ``input_sites=True``; for any other such a
    site is refused, rather than applied to the output.
    Raises ``ValueError`` when a pattern matches nothing (listing sample paths) or a module
    matches two sites, and ``TypeError`` when a matched module cannot take its site.
    """
    if not isinstance(modules, Mapping):
        raise TypeError(
            f"plan_sites: modules must map each module path to its ModuleRecord (or "
            f"ModuleShape), got {type(modules).__name__}; list them with "
            "mixlight.extend.record_module"
        )
    paths = list(modules)
    if not input_sites and any(site.tensor == "input" for site in config.sites):
        pattern = next(site.pattern for site in config.sites if site.tensor == "input")
        raise TypeError(
            f"Site {pattern!r} adapts its module's input (tensor='input'), which this backend "
            "does not apply; adapt the output of the layer that produces it instead (e.g. "
            "the activation before a down projection), or use a backend that does (torch)"
        )
    compiled = [(site, re.compile(site.pattern)) for site in config.sites]
    matched: dict[str, Site] = {}
    for site, regex in compiled:
        hits = [p for p in paths if regex.fullmatch(p)]
        if not hits:
            sample = [p for p in paths if p][:25]
            raise ValueError(
                f"Site pattern {site.pattern!r} matched no module (patterns must match the "
                f"whole path). Sample of this model's module paths: {sample}"
            )
        for path in hits:
            if path in matched:
                raise ValueError(
                    f"module {path!r} matches two sites: {matched[path].pattern!r} and "
                    f"{site.pattern!r}; make the patterns disjoint"
                )
            matched[path] = site
    encoders = _encoder_paths(paths)
    # A canonical order (natural sort of the paths), whatever order the backend walked the
    # model in: parameters are drawn in this order, so one seed gives one adapter everywhere.
    return [
        _resolve(
            config,
            path,
            matched[path],
            _shape_of_record(modules, path, matched[path]),
            sequence_side(path, encoders),
        )
        for path in sorted(matched, key=_natural_key)
    ]


def _encoder_paths(paths: Collection[str]) -> list[str]:
    """The paths of the encoders of encoder-decoders: modules ``P.encoder`` beside a
    ``P.decoder`` (``P`` may be empty)."""
    listed = set(paths)
    return [
        p
        for p in listed
        if p.rpartition(".")[2] == "encoder" and p.removesuffix("encoder") + "decoder" in listed
    ]


def sequence_side(path: str, encoders: Collection[str]) -> str:
    """The side (``"source"`` or ``"target"``) of the sequence the module at ``path`` reads.

    ``encoders`` are the model's encoder paths (modules ``P.encoder`` beside a ``P.decoder``).
    In an encoder-decoder, a module inside the encoder reads the source, and so do the decoder's
    cross-attention keys/values (T5's ``EncDecAttention.k``/``.v``, BART's
    ``encoder_attn.k_proj``/``.v_proj``), which project the encoder's output; every other
    module (decoder self-attention, cross-attention queries and outputs, FFNs, ``lm_head``)
    reads the target. A model with no encoder-decoder pair has one sequence: the source.
    """
    if not encoders or _CROSS_ATTENTION_KV.fullmatch(path):
        return SOURCE
    return SOURCE if any(path.startswith(e + ".") for e in encoders) else TARGET


def plan_recorded(
    config: AdapterConfig, recorded: Mapping[str, tuple[Site, ModuleShape]]
) -> list[SiteSpec]:
    """The sites of an adapter file from what it recorded, ``{path: (site, shape)}``, with
    no pattern matched (a file's patterns are data); in :func:`plan_sites`' order."""
    parents = {path.rsplit(".", i)[0] for path in recorded for i in range(path.count("."))}
    encoders = _encoder_paths(parents)
    return [
        _resolve(config, path, *recorded[path], sequence_side(path, encoders))
        for path in sorted(recorded, key=_natural_key)
    ]


def _shape_of_record(
    records: Mapping[str, ModuleRecord | ModuleShape], path: str, site: Site
) -> ModuleShape:
    record = records[path]
    return record if isinstance(record, ModuleShape) else shape_for(path, site, record)


def _natural_key(path: str) -> list[tuple[int, int | str]]:
    """``block.2`` before ``block.10``."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in path.split(".")]


def _resolve(
    config: AdapterConfig, path: str, site: Site, shape: ModuleShape, side: str = SOURCE
) -> SiteSpec:
    heads: int | None
    if not config.has_router:
        heads = None  # one expert: no router, nothing is routed per head
    elif site.heads == "auto":
        if shape.heads is None:
            raise ValueError(
                f"Site(pattern={site.pattern!r}, heads='auto') matched {path!r}, which is not "
                "inside an attention module with a known head count; give heads=<int>"
            )
        heads = shape.heads
    else:
        heads = site.heads  # type: ignore[assignment]
    spec = SiteSpec(
        path,
        site,
        config.num_experts,
        config.router,
        config.routing,
        shape.d_in,
        shape.d_out,
        heads,
        side,
    )
    width = spec.d_out if spec.reads == "output" else spec.d_in
    if heads and width % heads:
        raise ValueError(
            f"{path}: width {width} is not divisible by heads={heads}; use heads=None (one "
            "router over the whole width) or a head count that divides it"
        )
    return spec
