"""An optional package a run needs is checked at validation: one line naming the extra, exit 2.

Each test hides the package (sys.modules[name] = None makes it unimportable) and runs the CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from longlive.cli import EXIT_BAD_INPUT, main
from longlive.components import Component, missing_modules

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("hidden", ["transformers", "sentencepiece"])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_umt5_without_the_text_extra_names_the_extra(hidden, command, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, hidden, None)
    monkeypatch.chdir(tmp_path)  # a run would write runs/ here
    rc = main([command, str(ROOT / "experiments" / "t2v_bf16.toml"), "--set", f'model.text_encoder_path="{tmp_path}"'])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_BAD_INPUT
    assert err == (f"error: model.text_encoder: text encoder 'umt5-xxl' needs the Python package '{hidden}', which "
                   f"is not installed; install it with: pip install 'longlive[text]'")
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_present_packages_are_not_reported():
    assert missing_modules({"torch": "torch", "json": "-"}) == []
    assert missing_modules({"no_such_package_xyz": "xyz", "no_such_package_xyz.sub": "xyz"}) == [
        ("no_such_package_xyz", "xyz"), ("no_such_package_xyz.sub", "xyz")]


def test_a_plugin_component_can_declare_its_extra(monkeypatch):
    """The same mechanism serves plugins (quantization formats name fouroversix or te)."""
    monkeypatch.setitem(sys.modules, "fouroversix", None)
    component = Component("quant_format", "nvfp4_4o6", object(), "", "quant_4o6",
                          {"fouroversix": "'longlive[fouroversix]'"})
    with pytest.raises(Exception, match=r"^quant.generator: quant format 'nvfp4_4o6' needs the Python package "
                                        r"'fouroversix', which is not installed; install it with: pip install "
                                        r"'longlive\[fouroversix\]'$"):
        component.check_requirements("quant.generator")


@pytest.mark.parametrize("hidden", ["fouroversix", "transformers"])
def test_a_quant_format_without_fouroversix_names_the_install(hidden, monkeypatch, capsys):
    """quant_4o6's format needs fouroversix (and transformers, which fouroversix imports)."""
    monkeypatch.setitem(sys.modules, hidden, None)
    rc = main(["validate", str(ROOT / "experiments" / "toy" / "generate_w4a4.toml")])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_BAD_INPUT
    assert err.startswith(f"error: quant.generator: quant format 'fouroversix' needs the Python package '{hidden}', "
                          f"which is not installed; install it with: pip install ")
    assert "SKIP_CUDA_BUILD=1" in err and "\n" not in err
