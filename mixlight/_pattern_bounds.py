"""Site patterns that come from a file are data, not code: before mixlight matches one against
module paths it checks that the match takes bounded time.

Python's ``re`` backtracks, so a pattern such as ``(a|a)+b`` takes exponential time on a path
of 30 characters. The cause is always ambiguity under repetition: a repeated group that
holds another repeat, an alternation or a back-reference. Patterns free of those match in
time polynomial in the path length, of a degree bounded by their count of unbounded repeats
(``.*``, ``+``), which is capped too. Patterns a user writes in code are not checked.
"""

from __future__ import annotations

try:  # Python >= 3.11
    import re._constants as _c
    import re._parser as _parser
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _c  # type: ignore[no-redef, unused-ignore]
    import sre_parse as _parser  # type: ignore[no-redef, unused-ignore]

import re
from typing import Any

MAX_UNBOUNDED_REPEATS = 4
_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT} | {getattr(_c, "POSSESSIVE_REPEAT", _c.MAX_REPEAT)}
_BACKREFS = {_c.GROUPREF, _c.GROUPREF_EXISTS}


def check_bounded(pattern: str, where: str, what: str = "site pattern") -> None:
    """Refuse (``ValueError`` naming ``what`` and ``where``) a pattern whose matching may not
    end in bounded time: nested repetition, alternation or a back-reference under
    repetition, or more than :data:`MAX_UNBOUNDED_REPEATS` unbounded repeats."""
    try:
        items = _parser.parse(pattern)
    except re.error as err:
        raise ValueError(
            f"{what} {pattern!r} in {where} is not a valid regular expression ({err}); "
            "the file was edited or damaged: save the adapter again"
        ) from None
    unbounded: list[Any] = []
    problem = _ambiguity(list(items), repeated=False, unbounded=unbounded)
    if problem is None and len(unbounded) > MAX_UNBOUNDED_REPEATS:
        problem = f"{len(unbounded)} unbounded repeats (at most {MAX_UNBOUNDED_REPEATS})"
    if problem is not None:
        raise ValueError(
            f"{what} {pattern!r} in {where} holds {problem}, so matching it can take "
            "exponential (or high-polynomial) time, and mixlight does not evaluate such a "
            "pattern from a file; rewrite it without repeated alternatives or nested repeats "
            "(e.g. '.*(k|v)' instead of '(.*|k)+') and save the file again"
        )


def _ambiguity(items: list[Any], repeated: bool, unbounded: list[Any]) -> str | None:
    """What makes ``items`` (a parsed pattern) ambiguous under repetition, or None; counts
    unbounded repeats into ``unbounded``."""
    for op, av in items:
        if op in _BACKREFS:
            return "a back-reference"
        inner, repeats = _children(op, av)
        if op in _REPEATS and repeats:
            if repeated:
                return "a repetition inside a repetition"
            if av[1] == _c.MAXREPEAT:
                unbounded.append(av)
        if op == _c.BRANCH and repeated:
            return "an alternation inside a repetition"
        for child in inner:
            problem = _ambiguity(list(child), repeated or repeats, unbounded)
            if problem is not None:
                return problem
    return None


def _children(op: Any, av: Any) -> tuple[list[Any], bool]:
    """The sub-patterns of one parsed item, and whether the item repeats them (max > 1)."""
    if op in _REPEATS:
        return [av[2]], av[1] > 1
    if op == _c.SUBPATTERN:
        return [av[3]], False
    if op == _c.BRANCH:
        return list(av[1]), False
    if op in (_c.ASSERT, _c.ASSERT_NOT):
        return [av[1]], False
    if op == getattr(_c, "ATOMIC_GROUP", None):
        return [av], False
    return [], False
