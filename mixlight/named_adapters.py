"""The named adapters a model carries: one state type for every backend.

Frozen and hashable, so the JAX backend keeps it as static NNX metadata; every change makes
a new one. The torch backend holds it beside its runtime parts (hooks, the layers' switch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:  # annotations only: the backend contract imports this module early
    from mixlight.config import AdapterConfig
    from mixlight.site_spec import SiteSpec

DEFAULT = "default"
"""The name an adapter gets when none is given (PEFT's default name)."""
BASE = "__base__"
"""In ``adapter_per_example``'s names, the base model (no adapter); no adapter may take it."""


@attrs.frozen
class NamedAdapters:
    """``entries``: ``(name, config, sites)`` per adapter, in the order they were added;
    ``active``: the one that runs and trains (the first added, until switched)."""

    entries: tuple[tuple[str, AdapterConfig, tuple[SiteSpec, ...]], ...] = ()
    active: str = DEFAULT

    @property
    def configs(self) -> dict[str, AdapterConfig]:
        return {name: config for name, config, _ in self.entries}

    @property
    def site_specs(self) -> dict[str, tuple[SiteSpec, ...]]:
        return {name: specs for name, _, specs in self.entries}

    @property
    def config(self) -> AdapterConfig:
        """The active adapter's config."""
        return self.configs[self.active]

    @property
    def specs(self) -> tuple[SiteSpec, ...]:
        """The active adapter's sites."""
        return self.site_specs[self.active]

    def get(self, name: str | None = None) -> tuple[AdapterConfig, list[SiteSpec]]:
        """``(config, sites)`` of adapter ``name`` (default: the active one)."""
        name = self.check_name(name) if name is not None else self.active
        return self.configs[name], list(self.site_specs[name])

    def names(self) -> list[str]:
        """Adapter names, the active one first."""
        return [self.active, *(n for n, _, _ in self.entries if n != self.active)]

    def check_name(self, name: str) -> str:
        """``name`` when there is an adapter of that name; else a ``KeyError`` naming the
        adapters there are."""
        if name not in self.configs:
            raise KeyError(
                f"this model has no adapter named {name!r}; its adapters: {sorted(self.configs)}"
            )
        return name

    def check_new(self, name: str, fix: str) -> str:
        """``name`` when it is a valid name no adapter has yet; else a ``ValueError`` that
        ends with ``fix`` (what to do instead)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"adapter_name={name!r}: must be a Python identifier, e.g. 'default'")
        if name == BASE:
            raise ValueError(
                f"adapter_name={name!r} is reserved: adapter_per_example reads it as 'the base "
                "model, no adapter'; pick another name"
            )
        if name in self.configs:
            raise ValueError(
                f"this model already carries a mixlight adapter named {name!r}; pick another "
                f"adapter_name, delete it (mixlight.delete_adapter(model, {name!r})), {fix}"
            )
        return name

    def added(self, name: str, config: AdapterConfig, specs: list[SiteSpec]) -> NamedAdapters:
        """With adapter ``name`` added (active when it is the first)."""
        active = self.active if self.entries else name
        return NamedAdapters((*self.entries, (name, config, tuple(specs))), active)

    def activated(self, name: str) -> NamedAdapters:
        return attrs.evolve(self, active=self.check_name(name))

    def removed(self, name: str) -> NamedAdapters:
        """Without adapter ``name``; removing the active one activates the first left."""
        rest = tuple(e for e in self.entries if e[0] != self.check_name(name))
        active = self.active if self.active != name or not rest else rest[0][0]
        return NamedAdapters(rest, active)
