"""Named components (presets, codecs, text encoders, samplers, tasks, ...) that plugins register.

The registry is filled once per plugin manager through `longlive_register_components`; the
experiment then picks components by name (`model.preset`, `model.codec`, `run.task`, ...).
Registering is cheap: a factory can be a `Lazy("module:function")` reference, imported only when
a task calls it, so `validate`, `plugins` and config errors never import torch or model code. A
component that needs an optional package says so (`requires`); validation checks it.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable, Iterator, Mapping

import attrs

from longlive.errors import ConfigError, PluginError
from longlive.structure import nearest

KINDS = ("dit_preset", "codec", "text_encoder", "sampler", "task", "metric", "dataset", "quant_format")


@attrs.frozen
class Lazy:
    """A callable named by "module:attribute", imported at its first call."""

    target: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


def missing_modules(requires: Mapping[str, str]) -> list[tuple[str, str]]:
    """The (module, install hint) pairs of `requires` that cannot be imported here."""
    missing = []
    for module, install in requires.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or sys.modules[name] = None
            found = False
        if not found:
            missing.append((module, install))
    return missing


@attrs.frozen(kw_only=True)
class CodecSpec:
    """A "codec" component: its factory plus the geometry facts needed before it is built."""

    build: Callable[[Any], Any]  # (run) -> codec with encode/decode/decode_stream/decode_chunk
    temporal_stride: int  # pixel frames per latent frame (after the first)
    spatial_stride: int  # pixels per latent pixel
    latent_channels: int


@attrs.frozen
class Component:
    kind: str
    name: str
    value: Any
    summary: str
    plugin: str  # who registered it ("core" for the built-ins)
    requires: Mapping[str, str] = attrs.field(factory=dict)  # import name -> what to pip install

    def check_requirements(self, where: str) -> None:
        """A ConfigError naming the first optional package this component needs and lacks."""
        for module, install in missing_modules(self.requires):
            raise ConfigError(f"{where}: {self.kind.replace('_', ' ')} {self.name!r} needs the Python package "
                              f"{module!r}, which is not installed; install it with: pip install {install}")


class ComponentRegistry:
    """Components by kind and name; a name is owned by exactly one plugin."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Component] = {}

    def scoped(self, plugin: str) -> "ScopedRegistry":
        """The view handed to one plugin's hook, so every entry records its owner."""
        return ScopedRegistry(self, plugin)

    def add(self, kind: str, name: str, value: Any, *, summary: str = "", plugin: str = "core",
            requires: Mapping[str, str] | None = None) -> None:
        if kind not in KINDS:
            raise PluginError(f"plugin {plugin!r} registers unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        key = (kind, name)
        if key in self._items:
            other = self._items[key].plugin
            raise PluginError(f"{kind} {name!r} is registered by both {other!r} and {plugin!r}; "
                              f"disable one of them in run.plugins")
        self._items[key] = Component(kind, name, value, summary, plugin, dict(requires or {}))

    def get(self, kind: str, name: str, *, where: str) -> Component:
        """The component, or a ConfigError naming the key `where` and the valid names."""
        try:
            return self._items[(kind, name)]
        except KeyError:
            names = self.names(kind)
            hint = "; a plugin may provide it: add it to run.plugins" if not nearest(name, names) else ""
            raise ConfigError(f"{where}: unknown {kind.replace('_', ' ')} {name!r}{nearest(name, names)}; "
                              f"available: {', '.join(names) or 'none'}{hint}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._items if k == kind)

    def __iter__(self) -> Iterator[Component]:
        return iter(sorted(self._items.values(), key=lambda c: (c.kind, c.name)))


@attrs.frozen
class ScopedRegistry:
    """`registry.add(kind, name, value, summary=...)` on behalf of one plugin."""

    registry: ComponentRegistry
    plugin: str

    def add(self, kind: str, name: str, value: Any, *, summary: str = "",
            requires: Mapping[str, str] | None = None) -> None:
        self.registry.add(kind, name, value, summary=summary, plugin=self.plugin, requires=requires)
