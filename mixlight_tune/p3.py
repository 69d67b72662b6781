"""P3's naming rule (bigscience/P3, the T0 training and evaluation data).

P3 names each subset ``<dataset>_<template>``, where ``<dataset>`` is the Hugging Face
dataset and its configuration joined by ``_`` (``super_glue_rte``, ``winogrande_winogrande_xl``,
``story_cloze_2016``) and ``<template>`` the promptsource template name with every character
other than letters, digits, ``_`` and ``.`` turned into ``_`` (``GPT_3_style``). Subsets
ending in ``_score_eval`` hold the same prompts in the rank-classification layout (one row per
answer choice). ANLI's subsets end in the round (``anli_GPT_3_style_r1``): each round is a
dataset of its own, as T0 reports them.

:func:`split_name` cuts a subset name at the longest dataset prefix of :data:`DATASETS` and
names the dataset by its short task name (``super_glue_rte_GPT_3_style_score_eval`` -> task
``rte``, template ``GPT_3_style``; ``anli_can_we_infer_r2`` -> ``anli_r2``, ``can_we_infer``).
A name with no known prefix is the task itself, with no template.
"""

from __future__ import annotations

import re
from functools import lru_cache

SCORE_EVAL = "_score_eval"

# P3's dataset prefixes (dataset + configuration) -> the task name a report shows: T0's
# training mixture, its held-out evaluation and T0+/T0++'s extra datasets.
DATASETS: dict[str, str] = {
    # held out (the T0 evaluation)
    "anli": "anli",
    "hellaswag": "hellaswag",
    "story_cloze_2016": "story_cloze",
    "super_glue_cb": "cb",
    "super_glue_copa": "copa",
    "super_glue_rte": "rte",
    "super_glue_wic": "wic",
    "super_glue_wsc.fixed": "wsc",
    "winogrande_winogrande_xl": "winogrande",
    "winogrande_winogrande_debiased": "winogrande_debiased",
    # the T0 training mixture
    "glue_mrpc": "mrpc",
    "glue_qqp": "qqp",
    "paws_labeled_final": "paws",
    "kilt_tasks_hotpotqa": "hotpotqa",
    "wiki_qa": "wiki_qa",
    "adversarial_qa_dbidaf": "adversarial_qa_dbidaf",
    "adversarial_qa_dbert": "adversarial_qa_dbert",
    "adversarial_qa_droberta": "adversarial_qa_droberta",
    "duorc_SelfRC": "duorc_SelfRC",
    "duorc_ParaphraseRC": "duorc_ParaphraseRC",
    "ropes": "ropes",
    "quoref": "quoref",
    "cos_e_v1.11": "cos_e",
    "cosmos_qa": "cosmos_qa",
    "dream": "dream",
    "qasc": "qasc",
    "quail": "quail",
    "quarel": "quarel",
    "quartz": "quartz",
    "sciq": "sciq",
    "social_i_qa": "social_i_qa",
    "wiki_hop_original": "wiki_hop",
    "wiqa": "wiqa",
    "amazon_polarity": "amazon_polarity",
    "app_reviews": "app_reviews",
    "imdb": "imdb",
    "rotten_tomatoes": "rotten_tomatoes",
    "yelp_review_full": "yelp_review_full",
    "common_gen": "common_gen",
    "wiki_bio": "wiki_bio",
    "cnn_dailymail_3.0.0": "cnn_dailymail",
    "gigaword": "gigaword",
    "multi_news": "multi_news",
    "samsum": "samsum",
    "xsum": "xsum",
    "ag_news": "ag_news",
    "dbpedia_14": "dbpedia_14",
    "trec": "trec",
    # T0+ and T0++
    "ai2_arc_ARC_Challenge": "arc_challenge",
    "ai2_arc_ARC_Easy": "arc_easy",
    "openbookqa_main": "openbookqa",
    "piqa": "piqa",
    "race_high": "race_high",
    "race_middle": "race_middle",
    "squad_v2": "squad_v2",
    "super_glue_boolq": "boolq",
    "super_glue_multirc": "multirc",
    "super_glue_record": "record",
    "trivia_qa_unfiltered": "trivia_qa",
    "web_questions": "web_questions",
    "hotpot_qa_distractor": "hotpot_qa_distractor",
    "hotpot_qa_fullwiki": "hotpot_qa_fullwiki",
}
_LONGEST_FIRST = sorted(DATASETS, key=len, reverse=True)
_ANLI_ROUND = re.compile(r"(.+)_(r[123])")


def is_score_eval(name: str) -> bool:
    """Whether a subset name marks P3's rank-classification layout."""
    return name.endswith(SCORE_EVAL)


@lru_cache(maxsize=4096)
def split_name(name: str) -> tuple[str, str | None]:
    """``(task, template)`` of a P3 subset name; ``template`` is ``None`` when the name has
    no known dataset prefix (the whole name, less ``_score_eval``, is then the task) or is
    the dataset alone."""
    base = name.removesuffix(SCORE_EVAL)
    for prefix in _LONGEST_FIRST:
        if base == prefix:
            return DATASETS[prefix], None
        if base.startswith(prefix + "_"):
            task, template = DATASETS[prefix], base[len(prefix) + 1 :]
            if prefix == "anli" and (round_ := _ANLI_ROUND.fullmatch(template)):
                task, template = f"anli_{round_[2]}", round_[1]
            return task, template
    return base, None
