"""Every installed quantization format, for tests and benchmarks that cover them all.

A run takes its formats from its own plugins; this loads every installed plugin (built in or from
an installed package) with its default config and collects the `quant_format` components it registers.
"""
from __future__ import annotations

from longlive.components import ComponentRegistry
from longlive.quant.apply import format_object
from longlive.quant.format import QuantFormat
from longlive.registry.manager import installed_plugins, load_plugin_class
from longlive.structure import structure


def installed_formats() -> dict[str, QuantFormat]:
    """Format name -> format object, each plugin with its default config."""
    registry = ComponentRegistry()
    for name in sorted(installed_plugins()):
        cls = load_plugin_class(name)
        plugin = cls(structure({}, cls.Config, where=f"plugins.{name}"))
        if hasattr(plugin, "longlive_register_components"):
            plugin.longlive_register_components(registry=registry.scoped(name))
    return {n: format_object(registry.get("quant_format", n, where="installed formats").value)
            for n in registry.names("quant_format")}
