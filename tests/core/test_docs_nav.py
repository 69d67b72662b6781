"""Every page under ``docs/`` is in ``mkdocs.yml``'s nav and every nav entry exists: the docs
site (``mkdocs build --strict`` in scripts/test.sh) fails on either, so a new page must be
added to the nav. Checked here too, without mkdocs installed."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_nav_lists_every_docs_page():
    nav = set(re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages - nav == set(), "add these pages to mkdocs.yml's nav"
    assert nav - pages == set(), "mkdocs.yml's nav names pages that do not exist"
