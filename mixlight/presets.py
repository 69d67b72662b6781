"""The paper's adapter layouts: MoV, MoLoRA and their one-expert cases (IA)³ and LoRA, with
default sites for each model family (``docs/presets.md`` has the table).

A family names its modules in its own way; a preset's *roles* are the same everywhere
(paper.md §1.2, §2.2, §6):

* MoV / (IA)³ (``Vectors``): the attention keys and values (per-head routers) and the input
  of the feed-forward down projection. T5 scales the FFN activation's output
  ``DenseReluDense.act``, which is ``wo``'s input; a gated MLP (Llama's ``down_proj(act(gate)
  * up)``) has no module whose output is that product, so the site adapts ``down_proj``'s
  input (``Site(tensor="input")``), as PEFT's (IA)³ ``feedforward_modules`` do.
* MoLoRA / LoRA (``LowRank``): every linear layer of the attention and of the MLP.

``targets="auto"`` (the default) leaves the family to the model: the config carries the T5
layout with ``family_defaults=True``, and the backend swaps in the sites of the family named by
the model's ``config.model_type`` when the config is injected (:func:`resolve_targets`), so an
injected model and its saved files hold concrete sites. ``targets="llama"`` (any family name or
model type in :data:`FAMILIES`) picks a family's sites now; a list of patterns targets any
other model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

from mixlight.config import AdapterConfig, Router, Site, SoftMerge
from mixlight.experts import LowRank, Vectors


@attrs.frozen
class Family:
    """One model family's default sites, as full-path regexes.

    Attributes:
      name: the family's name (a valid ``targets=``).
      model_types: the HF ``config.model_type`` values it covers (each a valid ``targets=``).
      kv: the attention modules whose output holds the keys and values (a fused ``qkv``
        projection, where a family has one: its queries are scaled too, starting at one).
      ffn: the feed-forward module whose ``ffn_tensor`` is the down projection's input.
      ffn_tensor: ``"output"`` (an activation module, T5) or ``"input"`` (the down projection).
      attention: every linear layer of the attention (MoLoRA).
      mlp: the feed-forward linear layers (MoLoRA).
    """

    name: str
    model_types: tuple[str, ...]
    kv: str
    ffn: str
    ffn_tensor: str
    attention: str
    mlp: str


_ANY = r"(?:.*\.)?"
_T5_ATTENTION = _ANY + r"(?:SelfAttention|EncDecAttention)\."
_SELF_ATTN = _ANY + r"self_attn\."

FAMILIES: tuple[Family, ...] = (
    Family(
        "t5",
        ("t5", "mt5", "umt5"),
        kv=_T5_ATTENTION + r"(?:k|v)",
        ffn=_ANY + r"DenseReluDense\.act",
        ffn_tensor="output",
        attention=_T5_ATTENTION + r"(?:q|k|v|o)",
        mlp=_ANY + r"DenseReluDense\.(?:wi_0|wi|wo)",
    ),
    Family(
        "llama",
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"),
        kv=_SELF_ATTN + r"(?:k_proj|v_proj)",
        ffn=_ANY + r"mlp\.down_proj",
        ffn_tensor="input",
        attention=_SELF_ATTN + r"(?:q_proj|k_proj|v_proj|o_proj)",
        mlp=_ANY + r"mlp\.(?:gate_proj|up_proj|down_proj)",
    ),
    Family(
        "phi3",
        ("phi3",),
        kv=_SELF_ATTN + r"qkv_proj",
        ffn=_ANY + r"mlp\.down_proj",
        ffn_tensor="input",
        attention=_SELF_ATTN + r"(?:qkv_proj|o_proj)",
        mlp=_ANY + r"mlp\.(?:gate_up_proj|down_proj)",
    ),
    Family(
        "gpt2",
        ("gpt2",),
        kv=_ANY + r"attn\.c_attn",
        ffn=_ANY + r"mlp\.c_proj",
        ffn_tensor="input",
        attention=_ANY + r"attn\.(?:c_attn|c_proj)",
        mlp=_ANY + r"mlp\.(?:c_fc|c_proj)",
    ),
    Family(
        "gpt_neox",
        ("gpt_neox",),
        kv=_ANY + r"attention\.query_key_value",
        ffn=_ANY + r"mlp\.dense_4h_to_h",
        ffn_tensor="input",
        attention=_ANY + r"attention\.(?:query_key_value|dense)",
        mlp=_ANY + r"mlp\.(?:dense_h_to_4h|dense_4h_to_h)",
    ),
    Family(
        "bert",
        ("bert", "roberta", "xlm-roberta"),
        kv=_ANY + r"attention\.self\.(?:key|value)",
        ffn=_ANY + r"layer\.\d+\.output\.dense",
        ffn_tensor="input",
        attention=_ANY + r"attention\.(?:self\.(?:query|key|value)|output\.dense)",
        mlp=_ANY + r"layer\.\d+\.(?:intermediate|output)\.dense",
    ),
)
_BY_NAME = {key: f for f in FAMILIES for key in (f.name, *f.model_types)}
T5 = _BY_NAME["t5"]

# The T5 layout a config made with targets="auto" carries until it is injected, by role.
T5_VECTOR_SITES = ((T5.kv, "auto"), (T5.ffn, None))
T5_LOW_RANK_SITES = (T5.attention, T5.mlp)
_ROLES = {T5.kv: "kv", T5.ffn: "ffn", T5.attention: "attention", T5.mlp: "mlp"}

Targets = str | Sequence[str]


def family(name: str) -> Family:
    """The family of a family name or HF ``model_type`` (``"llama"``, ``"qwen2"``, ...)."""
    found = _BY_NAME.get(name)
    if found is None:
        raise ValueError(f"no mixlight preset family {name!r}; known: {sorted(_BY_NAME)}")
    return found


def _family_of(targets: Targets, method: str) -> Family | None:
    """The family whose sites ``targets`` names (T5 for ``"auto"``), or None for patterns."""
    if isinstance(targets, str):
        if targets == "auto":
            return T5
        if targets in _BY_NAME:
            return _BY_NAME[targets]
    elif targets:
        return None
    raise ValueError(
        f"{method}(targets={targets!r}): use 't5' or a non-empty list of module-path regexes, "
        f"'auto' (the model's family, the default) or a family: {sorted(_BY_NAME)}"
    )


def _vector_sites(fam: Family, expert: Vectors, per_head: bool) -> list[Site]:
    heads = "auto" if per_head else None
    return [
        Site(fam.kv, expert, heads=heads),
        Site(fam.ffn, expert, tensor=fam.ffn_tensor),
    ]


def MoV(
    num_experts: int = 10,
    *,
    targets: Targets = "auto",
    router: Router | None = None,
    routing: str = "token",
    per_head: bool | None = None,
    backend: str | None = None,
) -> AdapterConfig:
    """Mixture of (IA)³ vectors on the attention keys and values and the FFN down projection's
    input. ``targets``: ``"auto"`` (the model's family, chosen at injection from its
    ``config.model_type``), a family name (``"t5"``, ``"llama"``, ``"gpt2"``, ...; see
    ``docs/presets.md``) or a list of module-path regexes. The key/value sites of a family
    route per head unless ``per_head=False`` (the reference code's layout; per key/value head
    under grouped-query attention). Custom targets route on the whole width unless
    ``per_head=True``, which routes each matched module per head (``heads="auto"``: it must
    sit in an attention module of a known head count, else injection says so)."""
    expert = Vectors()
    fam = _family_of(targets, "MoV")
    if fam is None:
        heads = "auto" if per_head else None
        sites = [Site(p, expert, heads=heads) for p in targets]
    else:
        sites = _vector_sites(fam, expert, per_head is not False)
    return AdapterConfig(
        sites,
        num_experts,
        router or SoftMerge(),
        routing,
        backend,
        method="IA3" if num_experts == 1 else f"MoV-{num_experts}",
        family_defaults=targets == "auto",
    )


def MoLoRA(
    num_experts: int = 10,
    rank: int = 4,
    alpha: float = 16.0,
    *,
    targets: Targets = "auto",
    router: Router | None = None,
    routing: str = "token",
    backend: str | None = None,
) -> AdapterConfig:
    """Mixture of LoRA experts, each of rank ``rank``, scaled by ``alpha / rank``, on every
    linear layer of the attention and the MLP; ``targets`` as in :func:`MoV`."""
    expert = LowRank(rank, alpha)
    fam = _family_of(targets, "MoLoRA")
    patterns = list(targets) if fam is None else [fam.attention, fam.mlp]
    return AdapterConfig(
        [Site(p, expert) for p in patterns],
        num_experts,
        router or SoftMerge(),
        routing,
        backend,
        method=f"LoRA-r{rank}" if num_experts == 1 else f"MoLoRA-{num_experts}-r{rank}",
        family_defaults=targets == "auto",
    )


def IA3(*, targets: Targets = "auto", backend: str | None = None) -> AdapterConfig:
    """(IA)³: one scaling vector per site, no router; ``targets`` as in :func:`MoV`."""
    return MoV(1, targets=targets, backend=backend)


def LoRA(
    rank: int = 8, alpha: float = 16.0, *, targets: Targets = "auto", backend: str | None = None
) -> AdapterConfig:
    """LoRA: one low-rank delta per site, no router; ``targets`` as in :func:`MoV`."""
    return MoLoRA(1, rank, alpha, targets=targets, backend=backend)


def model_type_of(model: Any) -> str | None:
    """The HF ``config.model_type`` of a model of any framework (``"llama"``, ``"t5"``, ...),
    read from its ``config`` attribute; None for a model without one."""
    value = getattr(getattr(model, "config", None), "model_type", None)
    return value if isinstance(value, str) and value else None


def resolve_targets(
    config: AdapterConfig, model_type: str | None, paths: Sequence[str] = ()
) -> AdapterConfig:
    """``config`` with concrete sites for a model of HF ``model_type``: a config made with
    ``targets="auto"`` (``family_defaults``) gets its family's sites in place of its T5 ones,
    role by role (a site the preset did not make is kept as it is); any other config is
    returned unchanged. Backends call this when they inject or plan.

    A model without a model type keeps the T5 sites. A model type of no known family raises
    ``ValueError`` naming it, the known families, a sample of the model's module ``paths``
    and how to pass ``targets=``.
    """
    if not config.family_defaults:
        return config
    fam = T5 if model_type is None else _BY_NAME.get(model_type)
    if fam is None:
        raise ValueError(
            f"{config.method}: mixlight's presets have no default sites for model_type "
            f"{model_type!r} (families: {', '.join(f.name for f in FAMILIES)}; model types: "
            f"{sorted(_BY_NAME)}). Pass targets= a family whose module names this model "
            "shares (e.g. targets='llama'), or a list of full-path regexes of the modules to "
            "adapt (e.g. targets=[r'.*\\.self_attn\\.(k_proj|v_proj)']). Sample of this "
            f"model's module paths: {_sample(paths)}"
        )
    sites = []
    for site in config.sites:
        role = _ROLES.get(site.pattern)
        if role is None:
            sites.append(site)
        elif role == "ffn":
            sites.append(attrs.evolve(site, pattern=fam.ffn, tensor=fam.ffn_tensor))
        else:
            sites.append(attrs.evolve(site, pattern=getattr(fam, role)))
    return attrs.evolve(config, sites=sites, family_defaults=False)


def _sample(paths: Sequence[str], limit: int = 25) -> list[str]:
    """Up to ``limit`` module paths, those of the first layer block first (the names that
    repeat), then the rest."""
    first = [p for p in paths if re.search(r"\.0\.", p) and not re.search(r"\.[1-9]\d*\.", p)]
    rest = [p for p in paths if p and p not in first]
    return (first + rest)[:limit]
