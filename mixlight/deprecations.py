"""The one home of deprecations: code that keeps an old spelling working for a while.

mixlight 1.0 (adapter file format 1.0) is the first published version, so nothing is
deprecated today and no alias, reader or state-dict key of an earlier layout exists. When a
published name, argument or layout changes, the old form keeps working for at least one
minor release, and the code that keeps it working lives here, calling :func:`warn` (a module
``__getattr__`` for a moved name, a shim for a renamed argument). Its message names the
spelling that works now, so following it never raises under ``-W error::DeprecationWarning``
(the test suite runs so). The file format has its own rule, in :mod:`mixlight.adapter_file`:
a newer minor version may only add keys, and another major version is refused.
"""

from __future__ import annotations

import warnings


def warn(old: str, new: str, *, since: str, removed_in: str, stacklevel: int = 3) -> None:
    """Warn (``DeprecationWarning``) that ``old`` is deprecated: use ``new`` instead.

    Args:
      old: the deprecated spelling, as a user writes it (``"mixlight.Foo"``).
      new: the spelling that works now, as a user writes it.
      since: the mixlight version that deprecated ``old``; ``removed_in``: the version that
        removes it.
      stacklevel: the frame to blame; 3 is the caller of the function that calls this.
    """
    warnings.warn(
        f"{old} is deprecated since mixlight {since} and is removed in {removed_in}; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
