"""Each installed backend satisfies the backend contract (``mixlight._backend_contract``):
it is an ``ArrayBackend`` (and, with models, a ``ModelBackend``), implements every required
hook, and every hook it implements takes the contract's arguments."""

from __future__ import annotations

import importlib.util
import inspect

import pytest

import mixlight.extend as mlx
from tests.core.dict_backend import DictBackend

CONTRACTS = (mlx.ArrayBackend, mlx.ModelBackend)
# The optional capabilities each shipped framework backend lacks (NotSupported left in place).
LACKS = {"torch": set(), "jax": {"adapter_per_example"}}
OPTIONAL = {"merge_and_unload", "mean_routing", "adapter_per_example", "load_model"}


def _installed() -> list[str]:
    names = sorted(mlx.installed_backends())
    return [n for n in names if importlib.util.find_spec(mlx.installed_backends()[n].framework)]


def _hooks(contract: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(contract).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


def _parameters(signature: inspect.Signature) -> list[tuple[str, object, bool]]:
    return [(p.name, p.kind, p.default is p.empty) for p in signature.parameters.values()]


def check_backend(backend: object) -> set[str]:
    """Assert ``backend`` satisfies the contract; return the capabilities it lacks."""
    assert isinstance(backend, mlx.ArrayBackend), type(backend)
    assert backend.name and isinstance(backend.primitives, mlx.Primitives)
    assert all(isinstance(t, type) for t in backend.array_types)
    lacks = set()
    for contract in CONTRACTS:
        if not isinstance(backend, contract):
            continue
        for name, wanted in _hooks(contract).items():
            implemented = getattr(type(backend), name)
            assert not getattr(implemented, "__isabstractmethod__", False), name
            if implemented is vars(contract)[name]:
                lacks.add(name)
                continue
            got = inspect.signature(implemented)
            assert _parameters(got) == _parameters(wanted), f"{backend.name}.{name}{got}"
    return lacks & OPTIONAL


@pytest.mark.parametrize("name", _installed())
def test_each_installed_backend_satisfies_the_contract(name):
    backend = mlx.load_backend(name)
    lacks = check_backend(backend)
    if name == "numpy":
        assert not isinstance(backend, mlx.ModelBackend)  # arrays only: it has no models
    if name in LACKS:
        assert isinstance(backend, mlx.Backend) and lacks == LACKS[name]


def test_the_test_kit_backend_satisfies_it_and_lacks_every_capability():
    assert check_backend(DictBackend()) == OPTIONAL


def test_a_backend_missing_a_required_hook_cannot_be_made():
    class Partial(mlx.Backend):
        name = "partial"
        primitives = mlx.load_backend("numpy").primitives

        def owns_array(self, x):
            return False

    with pytest.raises(TypeError, match="abstract methods .*adapter_names"):
        Partial()
