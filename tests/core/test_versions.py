"""The first public version (1.0 of the package and of the file format), no compatibility
code for versions never published, and the one home of future deprecations."""

from __future__ import annotations

import importlib
import pathlib
import re
import warnings

import pytest

import mixlight as ml
from mixlight import adapter_file, deprecations

ROOT = pathlib.Path(__file__).resolve().parents[2]
# ``mixlight.a.b`` / ``ml.a`` / ``mlx.a`` written in the core's code, messages and docstrings
NAMED = re.compile(r"(?<![\w./-])(mixlight|ml|mlx)((?:\.[A-Za-z_]\w*)+)")
NOT_PATHS = {"mixlight.adapter", "mixlight.backends", "mixlight.Foo"}  # format, entry points


def test_the_package_and_the_file_format_are_1_0():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "1\.0\.0"', pyproject, re.M)
    assert ml.__version__ == "1.0.0"
    assert adapter_file.FORMAT_VERSION == "1.0"


def test_mixlight_has_no_aliases():
    assert not hasattr(ml, "__getattr__")
    with pytest.raises(AttributeError):
        ml.plan_sites  # noqa: B018 - in mixlight.extend only


FRAMEWORKS = ("torch", "jax", "flax", "optax", "transformers", "peft", "datasets")


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] in FRAMEWORKS:
                return None  # the module needs a framework this environment lacks
            continue
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def test_every_name_the_core_points_at_works_without_deprecation_warnings():
    aliases = {"ml": "mixlight", "mlx": "mixlight.extend"}
    named: dict[str, str] = {}
    for path in sorted((ROOT / "mixlight").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in NAMED.finditer(line):
                dotted = aliases.get(match[1], match[1]) + match[2]
                named.setdefault(dotted, f"{path.relative_to(ROOT)}:{number}")
    broken = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for dotted, where in named.items():
            if dotted in NOT_PATHS or dotted.endswith((".py", ".md")):
                continue
            try:
                _resolve(dotted)
            except (AttributeError, ImportError, DeprecationWarning) as err:
                broken.append(f"{where}: {dotted} ({type(err).__name__})")
    assert len(named) > 50 and broken == []


def test_deprecations_warn_with_the_spelling_that_works():
    def old() -> None:  # a shim kept for a deprecated spelling
        deprecations.warn("mixlight.old", "mixlight.new", since="1.2", removed_in="2.0")

    with pytest.warns(DeprecationWarning) as record:
        old()
    assert str(record[0].message) == (
        "mixlight.old is deprecated since mixlight 1.2 and is removed in 2.0; use mixlight.new"
    )
    assert record[0].filename == __file__  # blamed on the shim's caller
