"""Run a docs page's code blocks in order, as a reader would: ``python`` blocks are executed
in one namespace, ``toml``/``json`` blocks whose first line is ``# file: NAME`` are written to
``NAME``, and each ``mixlight ...`` line of a ``bash`` block runs through ``mixlight.cli.main``.
``--8<-- "path"`` lines (pymdownx.snippets, as the docs site renders them) are replaced by the
file they name, relative to the repository root.

    python -m tests.docs_pages docs/tutorials/custom-expert.md WORKDIR   # in a fresh process
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", flags=re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', flags=re.M)


def blocks(page: str | Path) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of ``page`` (relative to the root), with
    snippet lines expanded."""
    text = (ROOT / page).read_text()
    return [
        (lang, SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(), code))
        for lang, code in FENCE.findall(text)
    ]


def run_page(page: str | Path, workdir: Path) -> dict[str, Any]:
    """Run ``page``'s blocks inside ``workdir``; return the Python namespace."""
    from mixlight.cli import main

    namespace: dict[str, Any] = {"__name__": "docs_page"}
    before = os.getcwd()
    os.chdir(workdir)
    try:
        for lang, code in blocks(page):
            first, _, rest = code.partition("\n")
            if lang == "python":
                exec(compile(code, f"{page}", "exec"), namespace)
            elif lang in ("toml", "json") and first.startswith("# file: "):
                Path(first.removeprefix("# file: ")).write_text(code)
            elif lang == "bash":
                for line in code.splitlines():
                    argv = shlex.split(line, comments=True)
                    if argv and argv[0] == "mixlight":
                        assert main(argv[1:]) == 0, f"{page}: `{line}` failed"
    finally:
        os.chdir(before)
    return namespace


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    run_page(sys.argv[1], Path(sys.argv[2]))
