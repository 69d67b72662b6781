"""Where a ``mixlight tune`` run reports its scalars as it trains (``log = [...]``):
TensorBoard event files in ``output_dir/tensorboard`` and/or a Weights & Biases run
(``output_dir/wandb``). Only process 0 logs. Both are optional extras: ``pip install
'mixlight[tune-logs]'`` for TensorBoard; ``wandb`` is installed and logged in by the user."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .steps import DemoError

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"


class TensorBoard:
    """Scalars as TensorBoard events (the ``tensorboard`` package's writer and protos; no
    TensorFlow, no torch)."""

    def __init__(self, directory: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        directory.mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(directory))

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self.writer.add_event(
            Event(wall_time=time.time(), step=step, summary=Summary(value=values))
        )

    def close(self) -> None:
        self.writer.close()


class Wandb:
    """A Weights & Biases run named after the output folder, resumed with it."""

    def __init__(self, directory: Path, config: Mapping[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        (directory / WANDB_DIR).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project="mixlight", name=directory.name, dir=str(directory), config=dict(config)
        )

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


def check_available(kinds: tuple[str, ...]) -> None:
    """Refuse, before anything loads, a ``log`` entry whose package is not installed."""
    packages = {"tensorboard": "tensorboard", "wandb": "wandb"}
    for kind in kinds:
        try:
            __import__(packages[kind])
        except ImportError:
            extra = (
                "pip install 'mixlight[tune-logs]'"
                if kind == "tensorboard"
                else "pip install wandb"
            )
            raise DemoError(
                f'log = ["{kind}"] needs the {packages[kind]} package, which is not installed '
                f"({extra}), or remove it from log"
            ) from None


def open_logs(
    kinds: tuple[str, ...], directory: Path, config: Mapping[str, Any]
) -> tuple[Callable[[int, dict[str, float]], None] | None, Callable[[], None]]:
    """``(log(step, scalars), close())`` writing to every sink in ``kinds``."""
    sinks: list[Any] = []
    if "tensorboard" in kinds:
        sinks.append(TensorBoard(directory / TENSORBOARD_DIR))
    if "wandb" in kinds:
        sinks.append(Wandb(directory, config))
    if not sinks:
        return None, lambda: None

    def log(step: int, scalars: dict[str, float]) -> None:
        for sink in sinks:
            sink.log(step, scalars)

    def close() -> None:
        for sink in sinks:
            sink.close()

    return log, close
