"""The plugin manager: discovery, configs, role conflicts, component ownership, hook contracts."""
from __future__ import annotations

import attrs
import pluggy
import pytest

from debug_experiment import DEBUG_EXPERIMENT
from longlive.components import ComponentRegistry
from longlive.config import experiment_from_table
from longlive.errors import ConfigError, PluginError
from longlive.registry import hookimpl, hookspecs
from longlive.registry.manager import build_plugin_manager, installed_plugins


def _experiment(**run):
    return experiment_from_table({**DEBUG_EXPERIMENT, "run": {**DEBUG_EXPERIMENT["run"], **run}})


def test_hookspecs_document_themselves(pm):
    names = [n for n in dir(hookspecs) if n.startswith("longlive_")]
    assert len(names) >= 12
    for name in names:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert len(doc.strip()) > 40, f"{name} needs a docstring"
        assert hasattr(pm.hook, name)


def test_core_fills_every_role_by_default():
    pm, components, configs = build_plugin_manager(_experiment())
    assert configs == {}
    for hook_name in hookspecs.ROLE_HOOKS:
        impls = getattr(pm.hook, hook_name).get_hookimpls()
        assert [i.plugin_name for i in impls] == ["core"] and impls[0].trylast
    assert "debug" in components.names("dit_preset") and "generate" in components.names("task")


def test_plugin_role_beats_core_default():
    pm, _, _ = build_plugin_manager(_experiment(plugins=["conflicting_plugins:StorageA"]))
    impls = pm.hook.longlive_make_kv_storage.get_hookimpls()
    assert impls[-1].plugin_name == "conflicting_plugins:StorageA"  # called first (LIFO), core last


def test_two_plugins_claiming_one_role_are_refused():
    with pytest.raises(ConfigError, match="both provide the KV-cache storage"):
        build_plugin_manager(_experiment(plugins=["conflicting_plugins:StorageA", "conflicting_plugins:StorageB"]))


def test_misspelled_hook_fails_at_startup(tmp_path, monkeypatch):
    module = tmp_path / "typo_plugin.py"
    module.write_text(
        "import attrs\nfrom longlive.registry import hookimpl\n"
        "@attrs.frozen\nclass C:\n    pass\n"
        "class Typo:\n    Config = C\n    def __init__(self, config):\n        pass\n"
        "    @hookimpl\n    def longlive_chunk_dun(self, index):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="longlive_chunk_dun"):
        build_plugin_manager(_experiment(plugins=["typo_plugin:Typo"]))


def test_component_names_are_owned_once():
    registry = ComponentRegistry()
    registry.scoped("a").add("sampler", "x", object())
    with pytest.raises(PluginError, match="both 'a' and 'b'"):
        registry.scoped("b").add("sampler", "x", object())
    with pytest.raises(ConfigError, match='sampler.name: unknown sampler "?\'?y'):
        registry.get("sampler", "y", where="sampler.name")


def test_builtin_plugins_use_the_entry_point_group():
    assert installed_plugins()["toyworld"].target.startswith("longlive_plugins.toyworld")
