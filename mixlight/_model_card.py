"""The ``README.md`` model card of a saved adapter directory, in the Hugging Face Hub's layout.

A card is YAML front matter the Hub reads (``library_name: mixlight``, ``tags``, and
``base_model`` when the base is a Hub id), then Markdown: method, experts, sites, trainable
share, base model, a routing summary when the model has run, how to load the adapter in
torch and in JAX, and the paper's citation. It is rendered from the adapter's config and
sites (what :func:`mixlight.extend.write_adapter` always knows) plus :class:`CardFacts`
(what only the model can tell). Rendering is pure; a failure skips the card with a warning
and never costs the adapter. A ``README.md`` without :data:`MARKER` was written by someone
else and is kept.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from mixlight._atomic_dir import read_once
from mixlight._base_identity import BaseIdentity
from mixlight.config import AdapterConfig
from mixlight.site_spec import SiteSpec

if TYPE_CHECKING:  # the registry imports the file format, which imports this module
    from mixlight._backend_registry import AnyModelBackend

MARKER = "<!-- model card written by mixlight; edits are replaced on the next save -->"
MAX_ROUTING_ROWS = 12
HERE = "path/to/this/directory"  # where the loading snippets load from, until pushed
CITATION = """@article{zadouri2023pushing,
  title   = {Pushing Mixture of Experts to the Limit: Extremely Parameter Efficient MoE
             for Instruction Tuning},
  author  = {Zadouri, Ted and {\\"U}st{\\"u}n, Ahmet and Ahmadian, Arash and Ermi{\\c{s}},
             Beyza and Locatelli, Acyr and Hooker, Sara},
  journal = {arXiv preprint arXiv:2309.05444},
  year    = {2023}
}"""
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_DESCRIPTIONS = {
    "vectors": "(IA)³ scaling vectors",
    "low_rank": "low-rank (LoRA) updates",
}


@attrs.frozen
class CardFacts:
    """What the model can add to a card.

    Attributes:
      total_parameters: all parameters of the injected model (base + adapter), for the
        trainable share; None when unknown.
      routing: :func:`mixlight.routing_stats` of the last forward pass (module path ->
        ``mean_prob [E]``, ``top1_share [E]``, ``entropy``); None or empty when it never ran.
    """

    total_parameters: int | None = None
    routing: Mapping[str, Mapping[str, Any]] | None = None


def facts_of(backend: AnyModelBackend, model: Any) -> CardFacts:
    """What ``backend`` can tell of ``model`` for its card; parts it cannot tell stay None."""
    total = routing = None
    with contextlib.suppress(Exception):  # optional facts: a failure leaves them out
        total = int(backend.trainable_parameters(model).total)
    with contextlib.suppress(Exception):
        routing = backend.routing_stats(model) or None
    return CardFacts(total, routing)


def is_replaceable(path: Path) -> bool:
    """Whether a save may write ``path``: absent, or a card that mixlight wrote."""
    try:
        return MARKER in read_once(path).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return True
    except OSError:  # unreadable, or not a regular file (a FIFO is never opened to wait)
        return False


def card_or_none(
    config: AdapterConfig, specs: Sequence[SiteSpec], base: BaseIdentity, facts: CardFacts | None
) -> str | None:
    """:func:`render_card`, or None with a ``UserWarning`` when it fails (the save goes on)."""
    try:
        return render_card(config, specs, base, facts or CardFacts())
    except Exception as err:  # a card is documentation: it must never cost the adapter
        warnings.warn(
            f"the adapter is saved without its README.md model card, which could not be "
            f"rendered ({type(err).__name__}: {err}); please report this",
            UserWarning,
            stacklevel=3,
        )
        return None


def render_card(
    config: AdapterConfig, specs: Sequence[SiteSpec], base: BaseIdentity, facts: CardFacts
) -> str:
    """The whole ``README.md`` text."""
    adapter_params = sum(
        int(np.prod(p.shape)) for spec in specs for p in spec.param_specs().values()
    )
    hub_base = base.name if base.name and _HUB_ID.fullmatch(base.name) else None
    kinds = sorted({spec.expert.kind for spec in specs})
    lines = ["---", "library_name: mixlight", "tags:", "- mixlight", "- mixture-of-experts"]
    lines += [f"- {tag}" for tag in _method_tags(config, kinds)]
    if hub_base:
        lines.append(f"base_model: {hub_base}")
    lines += ["---", MARKER, ""]
    lines.append(f"# {config.method} adapter" + (f" for {base.name}" if base.name else ""))
    lines.append("")
    lines.append(_summary_sentence(config, kinds))
    lines.append("")
    lines += ["| | |", "|---|---|"]
    lines.append(f"| method | {config.method} |")
    lines.append(f"| experts | {_experts_text(config)} |")
    lines.append(f"| adapted modules | {len(specs)} |")
    lines.append(f"| adapter parameters | {adapter_params:,} |")
    if facts.total_parameters:
        share = 100.0 * adapter_params / facts.total_parameters
        lines.append(f"| trainable share | {share:.4f}% of {facts.total_parameters:,} parameters |")
    base_text = base.name or "unknown (not recorded at save)"
    if base.revision:
        base_text += f" (revision {base.revision})"
    lines.append(f"| base model | {base_text} |")
    lines += [
        "",
        "## Sites",
        "",
        "| pattern | expert | modules | parameters |",
        "|---|---|---|---|",
    ]
    for site in config.sites:
        matched = [s for s in specs if s.site == site]
        count = sum(int(np.prod(p.shape)) for s in matched for p in s.param_specs().values())
        lines.append(
            f"| `{_cell(site.pattern)}` | {_expert_text(site.expert.to_dict())} | "
            f"{len(matched)} | {count:,} |"
        )
    lines += _routing_section(facts.routing)
    lines += _loading_section(base.name)
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def _method_tags(config: AdapterConfig, kinds: list[str]) -> list[str]:
    mixture = config.num_experts > 1
    tags = []
    if "vectors" in kinds:
        tags.append("mov" if mixture else "ia3")
    if "low_rank" in kinds:
        tags.append("molora" if mixture else "lora")
    return tags


def _summary_sentence(config: AdapterConfig, kinds: list[str]) -> str:
    what = " and ".join(_DESCRIPTIONS.get(k, f"{k!r} experts") for k in kinds)
    paper = "[Zadouri et al., 2023](https://arxiv.org/abs/2309.05444)"
    if config.num_experts == 1:
        return f"A mixlight adapter of {what}, one per site ({paper})."
    return (
        f"A mixlight mixture of {config.num_experts} experts of {what} per site, mixed by a "
        f"learned router ({paper})."
    )


def _experts_text(config: AdapterConfig) -> str:
    if config.num_experts == 1:
        return "1 (no router)"
    router = config.router
    how = "soft merge" if router.top_k is None else f"top-{router.top_k}"
    return f"{config.num_experts} ({how}, {config.routing} routing)"


def _expert_text(expert: Mapping[str, Any]) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in expert.items() if k != "kind")
    return f"{expert['kind']}" + (f" ({fields})" if fields else "")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _routing_section(routing: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    if not routing:
        return []
    lines = [
        "",
        "## Routing (last forward pass before the save)",
        "",
        "| module | mean probability per expert | top-1 share per expert | entropy (nats) |",
        "|---|---|---|---|",
    ]
    for path in sorted(routing)[:MAX_ROUTING_ROWS]:
        stats = routing[path]
        lines.append(
            f"| `{_cell(path)}` | {_numbers(stats['mean_prob'])} | "
            f"{_numbers(stats['top1_share'])} | {float(stats['entropy']):.3f} |"
        )
    if len(routing) > MAX_ROUTING_ROWS:
        lines.append(f"| … {len(routing) - MAX_ROUTING_ROWS} more modules | | | |")
    return lines


def _numbers(values: Any) -> str:
    return " ".join(f"{float(x):.2f}" for x in np.asarray(values).reshape(-1))


def _loading_section(base_name: str | None) -> list[str]:
    where = HERE
    base = base_name or "path/to/the/base/checkpoint"
    return [
        "",
        "## How to load",
        "",
        "torch (`pip install mixlight[torch,t5]`):",
        "",
        "```python",
        "import mixlight as ml",
        "from transformers import T5ForConditionalGeneration",
        "",
        f'model = T5ForConditionalGeneration.from_pretrained("{base}")',
        f'ml.load_adapter(model, "{where}")',
        "```",
        "",
        "JAX / Flax NNX (`pip install mixlight[jax]`):",
        "",
        "```python",
        "import mixlight as ml",
        "from mixlight_jax import t5",
        "",
        f'model = t5.from_pretrained("{base}")  # a local HF checkpoint directory',
        f'ml.load_adapter(model, "{where}")',
        "```",
    ]


def retarget(card: Path, repo_id: str) -> None:
    """Point the loading snippets of the card at ``card`` to Hub repo ``repo_id`` (before an
    upload; the file is a private copy, so a plain rewrite is safe)."""
    if card.is_file() and is_replaceable(card):
        card.write_text(card.read_text("utf-8").replace(f'"{HERE}"', f'"{repo_id}"'), "utf-8")
