"""The folders the tuning commands write, and how each tells its own folders from the user's.

``mixlight tune`` writes ``output_dir``, ``mixlight demo`` writes ``--output-dir``, and
``mixlight demo --build-base`` (like the demo's base cache) writes a base checkpoint. Each may
write into a folder that is missing, empty, or its own; a folder holding anything else is
refused before any work, naming what is there, so the user's files (a model, data, notes)
are never overwritten or deleted.

A command claims a folder by writing :data:`MARKER`, a JSON object naming the command, before
its other files; that first write is also the check that the folder is writable.

A base is written whole into a fresh sibling staging folder and renamed into place
(:meth:`OutputKind.move_into_place`): the target is never half written, and the only folder
ever deleted is a previous base of the same kind that the new one replaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._files import atomic_write, umask
from .steps import DemoError

MARKER = ".mixlight-output"
SHOWN = 5  # entries named in a refusal


@dataclass(frozen=True)
class OutputKind:
    """The folders one command writes: ``command`` names it, in the marker and in messages."""

    command: str

    def check(self, folder: Path, setting: str) -> None:
        """Raise :class:`DemoError` unless ``folder`` (what the user called ``setting``, e.g.
        ``output_dir``) is missing, empty or this command's own. Writes nothing."""
        if folder.exists() and not folder.is_dir():
            raise DemoError(f"{setting} {folder} is a file, not a folder; choose a folder path")
        foreign = self.foreign_entries(folder)
        if foreign:
            shown = ", ".join(foreign[:SHOWN]) + (", ..." if len(foreign) > SHOWN else "")
            raise DemoError(
                f"{setting} {folder} holds files {self.command} did not write ({shown}); "
                "choose an empty folder or a new path (nothing there was changed)"
            )

    def foreign_entries(self, folder: Path) -> list[str]:
        """Every entry of ``folder`` when the folder is not this command's; none when it is
        missing, empty or claimed."""
        entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        if not entries or self.claimed(folder):
            return []
        return entries

    def owns(self, folder: Path) -> bool:
        """Whether ``folder`` holds entries, all of them this command's."""
        return folder.is_dir() and any(folder.iterdir()) and not self.foreign_entries(folder)

    def claimed(self, folder: Path) -> bool:
        """Whether ``folder`` holds this command's marker."""
        try:
            marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and marker.get("written_by") == self.command

    def mark(self, folder: Path) -> None:
        """Write this command's marker into ``folder`` (created if missing)."""
        atomic_write(folder / MARKER, json.dumps({"written_by": self.command}) + "\n")

    def claim(self, folder: Path, setting: str) -> None:
        """Create ``folder`` and mark it, before any other write: a folder that cannot be
        written fails here, before the work, as a DemoError naming it."""
        try:
            self.mark(folder)
        except OSError as err:
            raise DemoError(
                f"{setting} {folder} is not writable: {err.strerror or err}; choose a folder "
                "you can write to"
            ) from None

    def staging(self, folder: Path, setting: str) -> Path:
        """A fresh, empty sibling of ``folder`` to write the new contents into, with the
        usual permissions (``mkdtemp`` makes it private to its owner)."""
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.staging-"))
            staging.chmod(0o777 & ~umask())
            return staging
        except OSError as err:
            raise DemoError(
                f"{setting} {folder}: its parent folder is not writable: {err.strerror or err}; "
                "choose a folder you can write to"
            ) from None

    def move_into_place(self, staging: Path, folder: Path, setting: str) -> None:
        """Rename the complete ``staging`` folder to ``folder``. A folder of this command's
        already there is moved aside first and deleted once the new one is in place;
        anything else there is refused (checked again: it may have changed meanwhile)."""
        self.check(folder, setting)
        previous = None
        if self.owns(folder):
            previous = folder.with_name(f".{folder.name}.replaced-{secrets.token_hex(4)}")
            os.rename(folder, previous)
        try:
            os.rename(staging, folder)  # onto a missing or empty folder only, never a full one
        except OSError as err:
            if previous is not None:
                os.rename(previous, folder)
            raise DemoError(f"{setting} {folder}: could not move the new files in: {err}") from None
        if previous is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(previous)
