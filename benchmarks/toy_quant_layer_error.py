"""Per-layer output error of NVFP4 W4A4 linears on the shipped toy model, with real activations.

The unquantized model runs teacher forcing (the training forward) on rendered toy clips at a
few noise levels; a forward pre-hook records the input of every block linear. Each recorded
input then goes through that linear converted by the "fouroversix" format (W4A4: weights
quantized once, activations per call) and the relative error ||y_q - y|| / ||y|| of its output
is averaged over clips, per linear kind (q, k, v, o of self- and cross-attention, ffn.0, ffn.2)
and per block. Errors do not compound here: every layer sees the unquantized model's input.

    python benchmarks/toy_quant_layer_error.py --rules static_6 mse
    python benchmarks/toy_quant_layer_error.py --rules mse --formats fp8_rowwise mxfp4

`--formats` adds columns for other installed quant formats (their plugins' default configs).
"""
from __future__ import annotations

import argparse
import copy
from collections import defaultdict

import numpy as np
import torch

from longlive.config import load_experiment
from longlive.assembly import build_parts
from longlive.quant.apply import quantize_model
from longlive.components import ComponentRegistry
from longlive.quant.format import quantized_modules
from longlive.registry.manager import installed_plugins, load_plugin_class
from longlive.run import make_run
from longlive.sampling import FlowMatching
from longlive.structure import structure
from longlive.train.data import video_to_float
from longlive_plugins.quant_4o6.format import FourOverSixFormat
from longlive_plugins.quant_4o6.plugin import Quant4o6Config
from longlive_plugins.toyworld.world import DIRECTIONS, Scene, caption, render_shot

EXPERIMENT = "experiments/toy/eval_ar.toml"
CHUNK = 4


def record_inputs(model: torch.nn.Module, names: list[str], run_forward) -> dict[str, list[torch.Tensor]]:
    """Inputs of the named linears during `run_forward()`, by name."""
    seen: dict[str, list[torch.Tensor]] = defaultdict(list)
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: seen[n].append(args[0].detach().clone())) for n in names]
    try:
        run_forward()
    finally:
        for h in handles:
            h.remove()
    return seen


def installed_format(name: str):
    """The installed quant format `name`, registered by its plugin with default config."""
    registry = ComponentRegistry()
    for plugin_name in installed_plugins():
        cls = load_plugin_class(plugin_name)
        plugin = cls(structure({}, cls.Config, where=f"plugins.{plugin_name}"))
        if hasattr(plugin, "longlive_register_components"):
            plugin.longlive_register_components(registry=registry.scoped(plugin_name))
    return registry.get("quant_format", name, where="--formats").value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", nargs="*", default=["static_6", "mse"])
    parser.add_argument("--formats", nargs="*", default=[], help="other installed quant formats, e.g. fp8_rowwise")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.9, 0.5, 0.1])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run = make_run(load_experiment(EXPERIMENT, ['run.device="cpu"']), create_dir=False)
    parts = build_parts(run)
    model, codec, text = parts.model, parts.codec, parts.text
    converted = {}
    for rule in args.rules:
        q = copy.deepcopy(model)
        quantize_model(q, FourOverSixFormat(Quant4o6Config(weight_scale_rule=rule, activation_scale_rule=rule)),
                       role="generator", path="emulate", training=False)
        converted[rule] = q
    for name in args.formats:
        q = copy.deepcopy(model)
        quantize_model(q, installed_format(name), role="generator", path="emulate", training=False)
        converted[name] = q
    args.rules = [*args.rules, *args.formats]  # the columns
    names = [n for n, _ in quantized_modules(converted[args.rules[0]])]
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    errors = {rule: defaultdict(list) for rule in args.rules}
    directions = list(DIRECTIONS)
    for k in range(args.clips):
        scene = Scene(shape=["circle", "square", "triangle"][k % 3], color=["red", "green", "yellow", "cyan"][k % 4],
                      background="black", direction=directions[k % 8], speed="medium", size="large", bounce=True)
        video, _ = render_shot(scene, 4 * CHUNK, rng=rng)
        x0 = codec.encode(video_to_float(video)[None]).float()  # [1, C, F, h, w]
        context = text.encode([caption(scene)] * 4)[None]
        for sigma in args.sigmas:
            sig = torch.full((1, x0.shape[2]), sigma)
            x_t = FlowMatching.add_noise(x0, torch.randn(x0.shape, generator=gen), sig)
            with torch.no_grad():
                seen = record_inputs(model, names, lambda: model.forward_teacher(
                    x0, x_t, FlowMatching.timestep(sig), context, frames_per_block=CHUNK))
                for name in names:
                    ref_layer = model.get_submodule(name)
                    for x in seen[name]:
                        y = ref_layer(x)
                        for rule in args.rules:
                            y_q = converted[rule].get_submodule(name)(x)
                            errors[rule][name].append(float((y_q - y).norm() / y.norm()))
    kinds = sorted({n.split(".", 2)[2] for n in names})
    table = {rule: {kind: float(np.mean([e for n, v in errors[rule].items() if n.endswith(kind) for e in v]))
                    for kind in kinds} for rule in args.rules}
    blocks = sorted({int(n.split(".")[1]) for n in names})
    per_block = {rule: {b: float(np.mean([e for n, v in errors[rule].items() if n.startswith(f"blocks.{b}.")
                                          for e in v])) for b in blocks} for rule in args.rules}
    print("relative output error per linear kind (mean over blocks, clips, sigmas " + ", ".join(map(str, args.sigmas)) + ")")
    print("kind            " + "  ".join(f"{r:>9s}" for r in args.rules))
    for kind in kinds:
        print(f"{kind:15s} " + "  ".join(f"{table[r][kind]:9.4f}" for r in args.rules))
    print("per block       " + "  ".join(f"{r:>9s}" for r in args.rules))
    for b in blocks:
        print(f"blocks.{b:<8d} " + "  ".join(f"{per_block[r][b]:9.4f}" for r in args.rules))
    overall = {r: float(np.mean([e for v in errors[r].values() for e in v])) for r in args.rules}
    print("all             " + "  ".join(f"{overall[r]:9.4f}" for r in args.rules))
    return {"kinds": table, "blocks": per_block, "overall": overall}


if __name__ == "__main__":
    main()
