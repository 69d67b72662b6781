"""Resumable run directories: the training state of ``mixlight tune`` saved every few steps.

A checkpoint is one file, ``<output_dir>/checkpoint.safetensors``, written atomically (temp
file + ``os.replace``): a killed run leaves the previous checkpoint or the new one, never a
mix. Its tensors are the trainable weights (``model/<name>``), the optimiser state
(``optimizer/<name>``) and the framework's RNG state (``rng/<name>``); its safetensors
metadata holds one JSON object: the step reached, every loss so far, the JSON-able optimiser
values (``scalars``) and the resolved config the run belongs to. Nothing is pickled.

Beside it, ``<output_dir>/data_sha256.json`` (:class:`DataRecord`) holds the sha256 of the
training data the run started from; a run resumed on data changed under the same path is
refused, since its first steps were trained on other rows.

The data position is the step: :func:`mixlight_tune.sampling.batches` draws batch ``k`` from
``seed`` and ``k`` alone, so a resumed run skips the first ``step`` batches. A backend reads
and writes its own arrays (:class:`Resume` is framework-free).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from ._files import atomic_write
from .steps import DemoError

FILE = "checkpoint.safetensors"
DATA_FILE = "data_sha256.json"
META_KEY = "mixlight_tune_checkpoint"
FORMAT = 1
# Keys that may change between a run and its resumption: how it is shown and where it runs,
# not what it computes (a run may continue on other devices or another number of processes:
# the same experiment, to float rounding).
NOT_COMPARED = (
    "progress",
    "output_dir",
    "eval_batch_size",
    "checkpoint_every",
    "log",
    "device",
    "threads",
    "distributed",
    "mesh",
    "coordinator_address",
    "num_processes",
    "process_id",
    "gradient_checkpointing",
)
# Keys added after checkpoints were first written, and the value that reproduces what a run
# saved before them did: a saved config without the key compares as having that value.
INTRODUCED: dict[str, Any] = {
    "dropout": 0.0,
    "precision": "fp32",
    "grad_accum_steps": 1,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "max_grad_norm": None,
    "eval_every": 0,
    "keep_best": None,
}


class ResumeError(DemoError):
    """A run directory whose checkpoint cannot continue this run."""


@dataclass(frozen=True)
class Checkpoint:
    """The state after ``step`` optimiser steps."""

    step: int
    losses: list[float]
    arrays: dict[str, np.ndarray]
    scalars: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # the loop's journal (evaluations)

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays under ``prefix/``, keyed by the rest of their name."""
        start = f"{prefix}/"
        return {k[len(start) :]: v for k, v in self.arrays.items() if k.startswith(start)}


@dataclass(frozen=True)
class Resume:
    """Where a run saves its checkpoint, how often (``every`` steps; 0: never) and the
    resolved config that a checkpoint must match to be resumed."""

    directory: Path
    every: int
    config: Mapping[str, Any]

    @property
    def path(self) -> Path:
        return self.directory / FILE

    def load(self) -> Checkpoint | None:
        """The saved state, or ``None`` when the directory holds none. Raises
        :class:`ResumeError` naming the config fields that differ from the saved run's."""
        if not self.path.is_file():
            return None
        try:
            raw = self.path.read_bytes()
            arrays = load(raw)
            meta = json.loads(_metadata(raw)[META_KEY])
        except (SafetensorError, ValueError, KeyError, OSError) as err:
            raise ResumeError(
                f"{self.path} is not a readable checkpoint ({err}); delete it to start over"
            ) from None
        if meta.get("format") != FORMAT:
            raise ResumeError(
                f"{self.path}: checkpoint format {meta.get('format')!r}, "
                f"expected {FORMAT}; delete it to start over"
            )
        changed = config_changes(meta["config"], self.config)
        if changed:
            raise ResumeError(
                f"{self.directory} holds a run of another config ({'; '.join(changed)}); "
                "restore those values to resume it, or choose another output_dir"
            )
        for name in meta.get("zero_dim", []):  # (safetensors stores a 0-d array as [1])
            arrays[name] = arrays[name].reshape(())
        return Checkpoint(
            meta["step"], meta["losses"], arrays, meta.get("scalars", {}), meta.get("extra", {})
        )

    def due(self, step: int, last: int) -> bool:
        """Whether to save after ``step`` steps of ``last`` (every ``every``, and the last)."""
        return self.every > 0 and (step % self.every == 0 or step == last)

    def save(
        self,
        step: int,
        losses: list[float],
        arrays: Mapping[str, np.ndarray],
        scalars: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        meta = {
            "format": FORMAT,
            "step": step,
            "losses": losses,
            "scalars": dict(scalars or {}),
            "extra": dict(extra or {}),
            "config": dict(self.config),
            "zero_dim": sorted(k for k, v in arrays.items() if np.ndim(v) == 0),
        }
        tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        atomic_write(self.path, save(tensors, metadata={META_KEY: json.dumps(meta)}))


@dataclass(frozen=True)
class DataRecord:
    """The sha256 of each training data file (``{path: sha256}``) of the run in ``directory``."""

    directory: Path
    digests: Mapping[str, str]

    @property
    def path(self) -> Path:
        return self.directory / DATA_FILE

    def write(self) -> None:
        atomic_write(self.path, json.dumps(dict(self.digests), indent=2) + "\n")

    def check(self) -> None:
        """Raise :class:`ResumeError` naming each data file whose sha256 differs from the one
        recorded when the run started (nothing to compare when no record exists)."""
        recorded = self.recorded()
        changed = [
            f"{path}: sha256 {recorded[path]} then, {digest} now"
            for path, digest in self.digests.items()
            if recorded.get(path, digest) != digest
        ]
        if changed:
            what = "; ".join(changed)
            raise ResumeError(
                f"the data changed since the run in {self.directory} started ({what}); its "
                "checkpoint was trained on the old rows: restore that data to resume, or choose "
                "a fresh output_dir to start over on the new data"
            )

    def recorded(self) -> dict[str, str]:
        """The digests written when the run started (``{}`` when there is no record)."""
        try:
            recorded = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            recorded = None
        if not isinstance(recorded, dict):
            raise ResumeError(
                f"{self.path} is not a readable record of the run's data; delete it to resume "
                "without checking the data"
            )
        return recorded


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``"key: checkpoint X, config Y"`` for every compared key whose value differs; nested
    tables are compared key by key (``adapter.config.num_experts: checkpoint 3, config 4``)."""
    before = {k: v for k, v in INTRODUCED.items() if k not in saved} | _flat(saved)
    after = _flat(now)
    keys = sorted(k for k in set(before) | set(after) if k.split(".")[0] not in NOT_COMPARED)
    return [
        f"{k}: checkpoint {before.get(k)!r}, config {after.get(k)!r}"
        for k in keys
        if before.get(k) != after.get(k)
    ]


def _flat(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _metadata(raw: bytes) -> dict[str, str]:
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    return header.get("__metadata__", {})


def resume_point(
    resume: Resume | None, restore: Callable[[Checkpoint], None]
) -> tuple[int, list[float]]:
    """``(steps done, their losses)`` to continue from: ``(0, [])`` without a checkpoint;
    else ``restore(checkpoint)`` puts the backend's weights, optimiser and RNG back first."""
    checkpoint = None if resume is None else resume.load()
    if checkpoint is None:
        return 0, []
    restore(checkpoint)
    return checkpoint.step, list(checkpoint.losses)
