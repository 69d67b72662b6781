"""Named evaluation suites: ``eval_suite = "t0_held_out"`` expands to data sources.

``t0_held_out`` is the paper's Table 1 evaluation (paper.md §4-5): T0's held-out datasets
ANLI (rounds 1-3), CB, RTE, WSC, WiC, COPA, WinoGrande (``winogrande_xl``) and HellaSwag,
each in P3's rank-classification subsets (``*_score_eval``) of every template T0 scored
(``t0_eval_score_eval``), validation split. ``t0_held_out_all`` adds StoryCloze (2016), the
one held-out dataset of T0 the paper leaves out (its data needs a manual download).

A suite's report has one column per dataset, in the paper's order, each the median over the
dataset's templates; ANLI's column is the mean of its three rounds' medians (each round is a
dataset of its own, as T0 reports them). The sources are read from ``path``: by default the
Hub's parquet export of ``bigscience/P3`` (its own loading script no longer runs under
``datasets`` >= 4), or a local folder holding one folder per subset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hub
from .sources import DataSource, SourceError

P3_ID = "bigscience/P3"
P3_REVISION = "refs/convert/parquet"
SPLIT = "validation"
SCORE_EVAL = "_score_eval"

_NLI = (
    "GPT_3_style", "MNLI_crowdsource", "always_sometimes_never", "based_on_the_previous_passage",
    "can_we_infer", "claim_true_false_inconclusive", "consider_always_sometimes_never",
    "does_it_follow_that", "does_this_imply", "guaranteed_possible_impossible",
    "guaranteed_true", "justified_in_saying", "must_be_true", "should_assume",
    "take_the_following_as_truth",
)  # fmt: skip
_RTE = (
    "GPT_3_style", "MNLI_crowdsource", "based_on_the_previous_passage", "can_we_infer",
    "does_it_follow_that", "does_this_imply", "guaranteed_true", "justified_in_saying",
    "must_be_true", "should_assume",
)  # fmt: skip
_COPA = (
    "C1_or_C2_premise_so_because_", "_As_a_result_C1_or_C2_",
    "_What_could_happen_next_C1_or_C2_", "_which_may_be_caused_by", "_why_C1_or_C2",
    "best_option", "cause_effect", "choose", "exercise", "i_am_hesitating", "more_likely",
    "plausible_alternatives",
)  # fmt: skip
_WIC = (
    "GPT_3_prompt", "GPT_3_prompt_with_label", "affirmation_true_or_false", "grammar_homework",
    "polysemous", "question_context_meaning", "question_context_meaning_with_label",
    "question_context", "same_sense", "similar_sense",
)  # fmt: skip
_WSC = (
    "GPT_3_Style", "I_think_they_mean", "Who_or_what_is_are", "by_p_they_mean",
    "does_p_stand_for", "does_the_pronoun_refer_to", "in_other_words", "p_is_are_r",
    "replaced_with", "the_pronoun_refers_to",
)  # fmt: skip
_WINOGRANDE = (
    "Replace", "does_underscore_refer_to", "fill_in_the_blank", "stand_for",
    "underscore_refer_to",
)  # fmt: skip
_HELLASWAG = (
    "Predict_ending_with_hint", "Randomized_prompts_template", "complete_first_then",
    "if_begins_how_continues",
)  # fmt: skip
_STORY_CLOZE = (
    "Answer_Given_options", "Choose_Story_Ending", "Movie_What_Happens_Next",
    "Novel_Correct_Ending", "Story_Continuation_and_Options",
)  # fmt: skip


@dataclass(frozen=True)
class Column:
    """One column of a suite's report: its ``label``, the ``tasks`` it averages (each the
    median over its templates) and the P3 subsets scored for them."""

    label: str
    tasks: tuple[str, ...]
    subsets: tuple[str, ...]


def _column(label: str, task: str, prefix: str, templates: tuple[str, ...]) -> Column:
    return Column(label, (task,), tuple(f"{prefix}_{t}{SCORE_EVAL}" for t in templates))


_ANLI = Column(
    "ANLI",
    ("anli_r1", "anli_r2", "anli_r3"),
    tuple(f"anli_{t}_r{r}{SCORE_EVAL}" for r in (1, 2, 3) for t in _NLI),
)
_TABLE_1 = (
    _ANLI,
    _column("CB", "cb", "super_glue_cb", _NLI),
    _column("RTE", "rte", "super_glue_rte", _RTE),
    _column("WSC", "wsc", "super_glue_wsc.fixed", _WSC),
    _column("WiC", "wic", "super_glue_wic", _WIC),
    _column("COPA", "copa", "super_glue_copa", _COPA),
    _column("WNG", "winogrande", "winogrande_winogrande_xl", _WINOGRANDE),
    _column("HS", "hellaswag", "hellaswag", _HELLASWAG),
)
SUITES: dict[str, tuple[Column, ...]] = {
    "t0_held_out": _TABLE_1,
    "t0_held_out_all": (
        *_TABLE_1,
        _column("StoryCloze", "story_cloze", "story_cloze_2016", _STORY_CLOZE),
    ),
}


@dataclass(frozen=True)
class SuiteRef:
    """``eval_suite``: a suite's ``name`` and where its P3 subsets are read (a Hub id at
    ``revision``, or a local folder of one folder per subset)."""

    name: str
    path: Path | str = P3_ID
    revision: str | None = P3_REVISION

    def sources(self) -> tuple[DataSource, ...]:
        """One source per P3 subset, in column order."""
        subsets = [s for column in SUITES[self.name] for s in column.subsets]
        if isinstance(self.path, Path):
            return tuple(DataSource(self.path / s, split=SPLIT) for s in subsets)
        return tuple(DataSource(self.path, SPLIT, s, self.revision) for s in subsets)

    def columns(self) -> dict[str, tuple[str, ...]]:
        """``{column label: its tasks}`` in the paper's order."""
        return {c.label: c.tasks for c in SUITES[self.name]}

    def resolved(self) -> str | dict[str, str | None]:
        """The config value: the name alone when the rest is the default."""
        if self.path == P3_ID and self.revision == P3_REVISION:
            return self.name
        return {"name": self.name, "path": str(self.path), "revision": self.revision}


def parse_suite(value: Any, base_dir: Path) -> SuiteRef | None:
    """``eval_suite``: a suite name, or a table ``{name, path, revision}``."""
    if value is None:
        return None
    table = {"name": value} if isinstance(value, str) else value
    if not isinstance(table, dict) or set(table) - {"name", "path", "revision"}:
        raise SourceError(
            f"eval_suite must be a suite name ({', '.join(SUITES)}) or a table {{name = ..., "
            f"path = ..., revision = ...}}, got {value!r}"
        )
    name = table.get("name")
    if name not in SUITES:
        raise SourceError(f"eval_suite name must be one of {', '.join(SUITES)}, got {name!r}")
    path = table.get("path", P3_ID)
    if not isinstance(path, str) or not path:
        raise SourceError(f"eval_suite.path must be a Hub id or a folder, got {path!r}")
    local = Path(os.path.abspath(base_dir / path))
    if local.is_dir():
        if "revision" in table and table["revision"] is not None:
            raise SourceError(f"eval_suite.revision applies to a Hub id; {local} is a folder")
        return SuiteRef(name, local, None)
    if not hub.is_hub_id(path):
        raise SourceError(f"eval_suite.path = {path!r}: no folder at {local} and not a Hub id")
    return SuiteRef(name, path, table.get("revision", P3_REVISION if path == P3_ID else None))
