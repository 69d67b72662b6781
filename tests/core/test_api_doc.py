"""``docs/api.md`` is what ``docs/api_reference.py`` writes from the current docstrings, and
it covers every public name of ``mixlight``, each with a docstring (which the docs site,
``mkdocs build --strict``, renders from its ``::: mixlight.<name>`` line)."""

import importlib.util
import pathlib

import mixlight as ml

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("api_reference", DOCS / "api_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_doc_is_current():
    expected = _generator().render()
    assert (DOCS / "api.md").read_text() == expected, (
        "docs/api.md is stale: run `python docs/api_reference.py`"
    )


def test_every_public_name_is_documented_with_a_docstring():
    text = (DOCS / "api.md").read_text()
    generator = _generator()
    for module, alias in (("mixlight", "ml"), ("mixlight.extend", "mlx")):
        for name in generator.public(module):
            assert f"### `{alias}.{name}` (" in text, name
            assert f"\n::: {module}.{name}\n" in text, name  # the site renders the docstring
    assert generator.undocumented() == []


def test_the_user_api_is_small_and_the_extension_names_live_in_extend_only():
    assert len(ml.__all__) <= 32
    for name in ml.extend.__all__:
        assert name in ml.__all__ or not hasattr(ml, name), f"mixlight.{name} is an alias"
