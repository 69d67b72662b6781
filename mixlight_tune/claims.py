"""The paper's claims, checked on table B at the end of every run.

Each claim compares two methods' mean average accuracy over seeds; the margin is the first
minus the second, in points, and the spread is the sum of the two methods' sample standard
deviations (a deliberately strict noise band). A claim of kind ``beats`` holds when the
margin exceeds the spread; ``matches`` holds unless the first is behind by more than the
spread; ``close`` holds when the margin is within the spread. With one seed there is no
spread and no verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("mov", "ia3", "beats", "MoV-10 beats (IA)³"),
    ("molora", "lora", "matches", "MoLoRA-10 at least matches LoRA"),
    ("mov", "full", "close", "MoV-10 is close to full fine-tuning"),
)


def _holds(kind: str, margin: float, spread: float) -> bool:
    if kind == "beats":
        return margin > spread
    if kind == "matches":
        return margin >= -spread
    return abs(margin) <= spread


def check_claims(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per claim whose two methods both ran: means, margin (first minus second,
    in accuracy points), the summed spread, and whether the margin exceeds it."""
    out = []
    for first, second, kind, claim in CLAIMS:
        if first not in results or second not in results:
            continue
        a, b = results[first]["average"], results[second]["average"]
        seeds = min(results[first]["n_seeds"], results[second]["n_seeds"])
        margin = 100 * (a["mean"] - b["mean"])
        spread = 100 * (a["std"] + b["std"])
        out.append(
            {
                "claim": claim,
                "first": first,
                "second": second,
                "first_mean": 100 * a["mean"],
                "second_mean": 100 * b["mean"],
                "margin": margin,
                "spread": spread,
                "seeds": seeds,
                "exceeds_spread": None if seeds < 2 else abs(margin) > spread,
                "holds": None if seeds < 2 else _holds(kind, margin, spread),
            }
        )
    return out


def format_claims(claims: list[dict[str, Any]]) -> str:
    """The claim check as markdown lines."""
    if not claims:
        return "(no claim's two methods both ran)\n"
    lines = []
    for c in claims:
        if c["holds"] is None:
            verdict = "one seed: no spread to compare with, no verdict"
        else:
            where = "beyond" if c["exceeds_spread"] else "within"
            holds = "**holds**" if c["holds"] else "**does not hold**"
            verdict = f"{where} the seed spread ({c['spread']:.1f}): {holds}"
        lines.append(
            f"- {c['claim']}: {c['first_mean']:.1f} vs {c['second_mean']:.1f}, "
            f"margin {c['margin']:+.1f} points, {verdict}"
        )
    return "\n".join(lines) + "\n"
