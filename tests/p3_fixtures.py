"""Tiny P3-layout data and a Hub cache built on disk, for the ``mixlight tune`` source tests.

The same items in P3's two evaluation layouts: ``answer_choices`` (one row per example) and
``_score_eval`` (one row per example and choice, ``idx``/``is_correct``, rows shuffled), as
``datasets`` ``save_to_disk`` folders or JSONL; and a Hub cache (``HF_HUB_CACHE`` layout:
``<kind>s--owner--name/{refs/main, snapshots/<commit>/...}``) holding a model or a dataset.
"""

import json
import random
import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"

# (prompt, choices, answer): yes/no and three-way items.
ITEMS = [(f"Is {n} an even number?", ["yes", "no"], n % 2) for n in range(6)] + [
    (f"{n} is a prime, a square or neither?", ["prime", "square", "neither"], a)
    for n, a in ((2, 0), (4, 1), (6, 2), (9, 1), (11, 0))
]


def choices_rows(items=ITEMS):
    """P3's ``answer_choices`` layout (``*_pretokenized`` text, token ids beside it)."""
    return [
        {
            "inputs": [1, 2, 3],
            "inputs_pretokenized": prompt + " ",
            "targets": [4],
            "targets_pretokenized": " " + choices[answer],
            "answer_choices": choices,
        }
        for prompt, choices, answer in items
    ]


def score_eval_rows(items=ITEMS, seed=0):
    """P3's ``_score_eval`` layout, rows in a shuffled order."""
    rows = [
        {
            "idx": [i, c],
            "inputs": [1, 2, 3],
            "inputs_pretokenized": prompt,
            "targets": [4],
            "targets_pretokenized": " " + choice,
            "is_correct": c == answer,
            "weight": 1.0,
            "answer_choices": choices,
        }
        for i, (prompt, choices, answer) in enumerate(items)
        for c, choice in enumerate(choices)
    ]
    random.Random(seed).shuffle(rows)
    return rows


def save_dataset(folder: Path, rows, split="validation") -> Path:
    """A ``DatasetDict`` with one split, written by ``save_to_disk``."""
    import datasets

    columns = {k: [r[k] for r in rows] for k in rows[0]}
    datasets.DatasetDict({split: datasets.Dataset.from_dict(columns)}).save_to_disk(str(folder))
    return folder


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _snapshot(cache: Path, kind: str, repo_id: str, revision="main") -> Path:
    repo = cache / f"{kind}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def hub_model(cache: Path, repo_id: str, source: Path) -> Path:
    """``source``'s files as the cached snapshot of model ``repo_id`` (at ``main``)."""
    folder = _snapshot(cache, "model", repo_id)
    for file in source.iterdir():
        if file.is_file():
            shutil.copy(file, folder / file.name)
    return folder


def hub_dataset(cache: Path, repo_id: str, configs) -> Path:
    """A cached dataset repository: ``{config: {split: rows}}`` as JSONL files under
    ``data/`` named by a README's ``configs`` (a Hub repository's layout)."""
    folder = _snapshot(cache, "dataset", repo_id)
    readme = ["---", "configs:"]
    for name, splits in configs.items():
        readme += [f"- config_name: {name}", "  data_files:"]
        for split, rows in splits.items():
            (folder / "data" / name).mkdir(parents=True, exist_ok=True)
            write_jsonl(folder / "data" / name / f"{split}.jsonl", rows)
            readme += [f"  - split: {split}", f"    path: data/{name}/{split}.jsonl"]
    (folder / "README.md").write_text("\n".join([*readme, "---", ""]))
    return folder
