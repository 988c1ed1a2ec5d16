"""The plugin manager: discovery, configs, role conflicts, component ownership, hook contracts."""
from __future__ import annotations

import pytest

from debug_experiment import DEBUG_EXPERIMENT
from longlive.components import ComponentRegistry
from longlive.config import experiment_from_table
from longlive.errors import ConfigError, PluginError
from longlive.registry import hookspecs
from longlive.registry.manager import build_plugin_manager, installed_plugins


def _experiment(**run):
    return experiment_from_table({**DEBUG_EXPERIMENT, "run": {**DEBUG_EXPERIMENT["run"], **run}})


def _hookspecs():
    return [getattr(hookspecs, n) for n in dir(hookspecs) if n.startswith("longlive_")]


@pytest.mark.parametrize("spec", _hookspecs(), ids=lambda f: f.__name__)
def test_every_hookspec_documents_its_contract(spec, pm):
    """When it is called, every parameter (typed, not Any, named in the text) and what it returns."""
    import inspect

    doc = inspect.getdoc(spec) or ""
    assert hasattr(pm.hook, spec.__name__)
    assert "When" in doc or spec.__name__ == "longlive_log", f"{spec.__name__}: say when it is called"
    for name, param in inspect.signature(spec).parameters.items():
        assert param.annotation not in (inspect.Parameter.empty, "Any"), f"{spec.__name__}({name}) needs a type"
        assert name == "run" or name in doc, f"{spec.__name__}: document parameter {name!r}"
    returns = inspect.signature(spec).return_annotation
    assert returns == "None" or "Return" in doc or "Role:" in doc, f"{spec.__name__}: say what it returns"


def test_roles_are_the_firstresult_hooks():
    firstresult = {f.__name__ for f in _hookspecs() if f.longlive_spec.get("firstresult")}
    assert set(hookspecs.ROLES) == firstresult
    assert {"longlive_make_kv_storage", "longlive_next_prompt", "longlive_prompt_prefix"} <= firstresult
    assert all(not role.startswith("longlive_") for role in hookspecs.ROLES.values())  # each names its role


def test_core_defaults_are_trylast_and_alone():
    pm, components, configs = build_plugin_manager(_experiment())
    assert configs == {}
    defaults = {"longlive_make_kv_storage", "longlive_make_kv_policy", "longlive_make_decoder",
                "longlive_make_objective", "longlive_make_device_mesh", "longlive_make_sequence_layout",
                "longlive_make_training_algorithm"}
    for hook_name in hookspecs.ROLES:
        impls = getattr(pm.hook, hook_name).get_hookimpls()
        if hook_name in defaults:
            assert [i.plugin_name for i in impls] == ["core"] and impls[0].trylast
        else:  # None is a complete answer (no live prompt, no prefix): the core leaves the role empty
            assert impls == []
    assert "debug" in components.names("dit_preset") and "generate" in components.names("task")


def test_plugin_role_beats_core_default():
    pm, _, _ = build_plugin_manager(_experiment(plugins=["conflicting_plugins:StorageA"]))
    impls = pm.hook.longlive_make_kv_storage.get_hookimpls()
    assert impls[-1].plugin_name == "conflicting_plugins:StorageA"  # called first (LIFO), core last


def test_two_plugins_claiming_one_role_are_refused():
    with pytest.raises(ConfigError, match="'conflicting_plugins:StorageA' and 'conflicting_plugins:StorageB' both "
                                          "provide the KV-cache storage"):
        build_plugin_manager(_experiment(plugins=["conflicting_plugins:StorageA", "conflicting_plugins:StorageB"]))


def test_two_live_prompt_sources_are_refused():
    with pytest.raises(ConfigError, match="both provide the live prompt source"):
        build_plugin_manager(_experiment(plugins=["conflicting_plugins:PromptA", "conflicting_plugins:PromptB"]))


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
