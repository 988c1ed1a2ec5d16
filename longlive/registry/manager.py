"""Build the plugin manager of one run: the core plugin plus exactly the plugins the TOML lists.

Plugins are looked up by name in the `longlive.plugins` entry-point group (built-ins and
third-party packages alike) or given as `module:object` paths for ad-hoc plugins. Unlike
pytest we never auto-load every installed plugin: the TOML is the complete record of what ran.
"""
from __future__ import annotations

import importlib
import logging
from importlib import metadata
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from longlive.components import ComponentRegistry
from longlive.errors import ConfigError, PluginError
from longlive.registry import ENTRY_POINT_GROUP, PROJECT, hookspecs
from longlive.structure import nearest, structure

if TYPE_CHECKING:
    from longlive.config import Experiment

log = logging.getLogger(__name__)


@attrs.frozen
class PluginInfo:
    """What `longlive plugins` shows about one installed plugin."""

    name: str
    target: str  # "module:object"
    distribution: str
    version: str


def installed_plugins() -> dict[str, PluginInfo]:
    """Installed plugins by name, from the entry-point group."""
    found = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        found[ep.name] = PluginInfo(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
    return found


def load_plugin_class(name: str) -> type:
    """The plugin class for an entry-point name or a `module:object` path."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        target = name
    else:
        plugins = installed_plugins()
        if name not in plugins:
            raise ConfigError(f"run.plugins: unknown plugin {name!r}{nearest(name, plugins)}; installed: "
                              f"{', '.join(sorted(plugins)) or 'none'} (or give a module:object path)")
        target = plugins[name].target
        module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"plugin {name!r} failed to import {module_name!r}: {e}") from e
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part) if part else obj
    except AttributeError:
        raise ConfigError(f"run.plugins: {target!r} names no object in module {module_name!r}") from None
    if not isinstance(obj, type) or not attrs.has(getattr(obj, "Config", None)):
        if ":" in name:  # the user typed this path
            raise ConfigError(f"run.plugins: {name!r} is not a plugin class (a class with a frozen attrs `Config`)")
        raise PluginError(f"plugin {name!r} ({target}) must be a class with a frozen attrs `Config` class attribute")
    return obj


def new_plugin_manager() -> pluggy.PluginManager:
    """A manager with the hookspecs and no plugins (tests start from this)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def build_plugin_manager(experiment: Experiment) -> tuple[pluggy.PluginManager, ComponentRegistry, dict[str, Any]]:
    """Register the core and the experiment's plugins; return (pm, components, plugin configs)."""
    from longlive.core_plugin import CorePlugin

    pm = new_plugin_manager()
    pm.register(CorePlugin(), name="core")
    configs: dict[str, Any] = {}
    for name in experiment.run.plugins:
        cls = load_plugin_class(name)
        table = experiment.plugins.get(name, {})
        config = structure(table, cls.Config, where=f"plugins.{name}")
        try:
            plugin = cls(config)
        except ConfigError:
            raise
        except Exception as e:
            raise PluginError(f"plugin {name!r} failed to start: {type(e).__name__}: {e}") from e
        pm.register(plugin, name=name)
        configs[name] = config
        if not table:
            log.info("plugin %s: no [plugins.%s] table, using defaults %s", name, name, config)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(f"a plugin implements a hook that does not exist: {e}") from e
    _refuse_role_conflicts(pm)
    components = ComponentRegistry()
    for impl in pm.hook.longlive_register_components.get_hookimpls():
        impl.function(registry=components.scoped(impl.plugin_name))
    pm.hook.longlive_configure(experiment=experiment, plugin_configs=configs)
    return pm, components, configs


def _refuse_role_conflicts(pm: pluggy.PluginManager) -> None:
    for hook_name, role in hookspecs.ROLES.items():
        owners = [impl.plugin_name for impl in getattr(pm.hook, hook_name).get_hookimpls()
                  if impl.plugin_name != "core"]
        if len(owners) > 1:
            raise ConfigError(f"run.plugins: {' and '.join(repr(o) for o in owners)} both provide {role}; "
                              f"enable only one of them")


def plugin_summary(cls: type) -> str:
    """First line of the plugin's docstring."""
    doc = (cls.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def plugin_hooks(cls: type) -> list[str]:
    """Names of the hooks a plugin class implements."""
    return sorted(n for n in dir(cls) if n.startswith("longlive_")
                  and hasattr(getattr(cls, n), f"{PROJECT}_impl"))


def config_defaults(cls: type) -> dict[str, Any]:
    """The plugin's config keys with their defaults ("<required>" when none)."""
    out = {}
    for field in attrs.fields(cls.Config):
        if field.default is attrs.NOTHING:
            out[field.name] = "<required>"
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            out[field.name] = field.default.factory()
        else:
            out[field.name] = field.default
    return out
