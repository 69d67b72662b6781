"""PEFT -> mixlight: the one-expert config a PEFT adapter is, and its values as every expert
of a mixture (upcycling)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from mixlight._peft.reading import PeftAdapter
from mixlight.adapter_file import AdapterFileError
from mixlight.config import AdapterConfig, Site, SoftMerge
from mixlight.experts import LowRank, Vectors
from mixlight.site_spec import SiteSpec

# --- PEFT -> mixlight ----------------------------------------------------------------------


def one_expert_config(peft: PeftAdapter) -> AdapterConfig:
    """The one-expert mixlight config of exactly the PEFT adapter's modules: one site per
    expert kind (and LoRA rank and scale), its pattern matching exactly those paths."""
    groups: dict[tuple[str, int, float, str], list[str]] = defaultdict(list)
    for module in peft.modules.values():
        key = (module.kind, module.rank, _expert_scale(module.scale), module.tensor)
        groups[key].append(module.path)
    sites = []
    for (kind, rank, scale, tensor), paths in sorted(groups.items()):
        expert = Vectors() if kind == "vectors" else LowRank(rank, scale * rank)
        sites.append(Site(exact_pattern(paths), expert, tensor=tensor))
    ranks = sorted({r for kind, r, _, _ in groups if kind == "low_rank"})
    method = "IA3" if peft.peft_type == "IA3" else "LoRA-r" + "/".join(map(str, ranks))
    return AdapterConfig(sites, 1, SoftMerge(), method=f"{method} (from PEFT)")


def _expert_scale(peft_scale: float) -> float:
    """The scale of the LowRank expert that holds a LoRA of PEFT scale ``peft_scale``: a
    LowRank's alpha is positive, so a negative or zero PEFT scale is folded into ``lora_B``
    (times -1 or 0, exact) by :func:`fill_experts`."""
    return abs(peft_scale) or 1.0


def check_upcycle(peft: PeftAdapter, config: AdapterConfig) -> None:
    """Refuse an upcycling config that does not hold every PEFT module with its kind (and
    LoRA rank), before anything is injected."""
    compiled = [(site, re.compile(site.pattern)) for site in config.sites]
    for module in peft.modules.values():
        site = next((s for s, regex in compiled if regex.fullmatch(module.path)), None)
        if site is None:
            raise AdapterFileError(
                f"PEFT module {module.key} (mixlight site {module.path}) matches no site of the "
                f"upcycling config {config.method} (patterns "
                f"{[s.pattern for s in config.sites]}); its trained values would be lost: add a "
                "site for it, or import without upcycle="
            )
        if site.expert.kind != module.kind:
            raise AdapterFileError(
                f"PEFT module {module.key} is {_kind_text(module.kind)} but upcycling site "
                f"{site.pattern!r} holds {site.expert.kind!r} experts; upcycle (IA)³ into "
                "ml.MoV and LoRA into ml.MoLoRA"
            )
        if site.tensor != module.tensor:
            raise AdapterFileError(
                f"PEFT module {module.key} scales its module's {module.tensor} but upcycling "
                f"site {site.pattern!r} adapts the {site.tensor}; use a site with "
                f"tensor={module.tensor!r} there (the presets' targets='auto' or the model's "
                "family has it)"
            )
        expert_rank = getattr(site.expert, "rank", None)
        if module.kind == "low_rank" and expert_rank != module.rank:
            raise AdapterFileError(
                f"PEFT module {module.key} has rank {module.rank} but upcycling site "
                f"{site.pattern!r} has rank {expert_rank}; use ml.MoLoRA(..., rank={module.rank})"
            )


def _kind_text(kind: str) -> str:
    return "(IA)³ vectors" if kind == "vectors" else "LoRA"


def fill_experts(
    peft: PeftAdapter, specs: Sequence[SiteSpec], arrays: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``arrays`` (a model's adapter state) with every expert of each PEFT module's site set
    to the PEFT values; routers and sites PEFT did not adapt keep their values."""
    out = {name: np.array(value, np.float32) for name, value in arrays.items()}
    by_path = {spec.path: spec for spec in specs}
    for module in peft.modules.values():
        spec = by_path.get(module.path)
        if spec is None:
            raise AdapterFileError(
                f"PEFT module {module.key} maps to {module.path}, which the model has no site "
                "for; load the PEFT adapter into the base model it was trained on"
            )
        values = dict(module.arrays)
        expert_scale = getattr(spec.expert, "scale", None)
        if module.kind == "low_rank" and expert_scale is not None:
            ratio = module.scale / float(expert_scale)  # PEFT's scale folded into lora_B
            values["lora_B"] = (values["lora_B"] * ratio).astype(np.float32)
        for short, value in values.items():
            name = spec.canonical_name(short)
            target = out[name]
            if target.shape[1:] != value.shape:
                raise AdapterFileError(
                    f"PEFT module {module.key}: its {short} has shape {value.shape}, the model's "
                    f"{module.path} needs {target.shape[1:]}; the PEFT adapter was trained on "
                    "another base model: load it into that one"
                )
            target[...] = value[None]
    return out


def exact_pattern(paths: Sequence[str]) -> str:
    """A regex that fullmatches exactly ``paths``: paths that differ only in numeric parts
    are merged (``encoder\\.block\\.(?:0|1)\\.layer...``) where that adds no other path."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in paths:
        groups[tuple("#" if p.isdigit() else p for p in path.split("."))].append(path)
    alternatives = []
    for template, members in groups.items():
        numbers = [tuple(p for p in m.split(".") if p.isdigit()) for m in members]
        columns = [sorted(set(col), key=int) for col in zip(*numbers, strict=True)]
        if math.prod(len(c) for c in columns) == len(set(numbers)):
            values = iter(columns)
            alternatives.append(
                r"\.".join(_choice(next(values)) if p == "#" else re.escape(p) for p in template)
            )
        else:
            alternatives += [re.escape(m) for m in sorted(set(members))]
    pattern = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
    assert all(re.fullmatch(pattern, p) for p in paths)
    return pattern


def _choice(values: list[str]) -> str:
    return values[0] if len(values) == 1 else "(?:" + "|".join(values) + ")"
