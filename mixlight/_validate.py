"""attrs validators whose messages name the class, the field, the value and what is allowed."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from typing import Any

Validator = Callable[[Any, Any, Any], None]  # attrs: (instance, attribute, value)


def _owner(inst: Any, attribute: Any) -> str:
    return f"{type(inst).__name__}.{attribute.name}"


def int_at_least(minimum: int) -> Validator:
    def check(inst: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"{_owner(inst, attribute)}={value!r}: must be an integer >= {minimum}"
            )

    return check


def _finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def non_negative_float(inst: Any, attribute: Any, value: Any) -> None:
    if not _finite_number(value) or not value >= 0:
        raise ValueError(
            f"{_owner(inst, attribute)}={value!r}: must be a finite number >= 0 "
            "(0 disables this loss)"
        )


def positive_float(inst: Any, attribute: Any, value: Any) -> None:
    if not _finite_number(value) or not value > 0:
        raise ValueError(f"{_owner(inst, attribute)}={value!r}: must be a finite number > 0")


def one_of(allowed: Collection[Any]) -> Validator:
    def check(inst: Any, attribute: Any, value: Any) -> None:
        if value not in allowed:
            raise ValueError(
                f"{_owner(inst, attribute)}={value!r}: allowed values are "
                + ", ".join(repr(a) for a in allowed)
            )

    return check


def regex(inst: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"{_owner(inst, attribute)}={value!r}: must be a non-empty regular "
            "expression matched against full module paths"
        )
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(
            f"{_owner(inst, attribute)}={value!r} is not a valid regular expression: {err}"
        ) from None


def instance_of(*types: type, what: str) -> Validator:
    def check(inst: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, types):
            raise ValueError(
                f"{_owner(inst, attribute)}={value!r}: expected {what}, got {type(value).__name__}"
            )

    return check
