"""Named components (presets, codecs, text encoders, samplers, tasks, ...) that plugins register.

The registry is filled once per plugin manager through `longlive_register_components`; the
experiment then picks components by name (`model.preset`, `model.codec`, `run.task`, ...).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import attrs

from longlive.errors import ConfigError, PluginError
from longlive.structure import nearest

KINDS = ("dit_preset", "codec", "text_encoder", "sampler", "task", "metric", "dataset", "quant_format")


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


class ComponentRegistry:
    """Components by kind and name; a name is owned by exactly one plugin."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Component] = {}

    def scoped(self, plugin: str) -> "ScopedRegistry":
        """The view handed to one plugin's hook, so every entry records its owner."""
        return ScopedRegistry(self, plugin)

    def add(self, kind: str, name: str, value: Any, *, summary: str = "", plugin: str = "core") -> None:
        if kind not in KINDS:
            raise PluginError(f"plugin {plugin!r} registers unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        key = (kind, name)
        if key in self._items:
            other = self._items[key].plugin
            raise PluginError(f"{kind} {name!r} is registered by both {other!r} and {plugin!r}; "
                              f"disable one of them in run.plugins")
        self._items[key] = Component(kind, name, value, summary, plugin)

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

    def add(self, kind: str, name: str, value: Any, *, summary: str = "") -> None:
        self.registry.add(kind, name, value, summary=summary, plugin=self.plugin)
