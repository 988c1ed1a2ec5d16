"""TE's NVFP4 rules against fouroversix's on the same random inputs: relative errors, tensor by tensor.

For each rule set, one linear y = x W^T (x [tokens, K], W [N, K], dy [tokens, N]) is quantized
through the formats' own emulated paths (plugins quant_te and quant_4o6) and compared with fp64:
- weight:      ||deq(Q_w(W)) - W|| / ||W||          (the fprop weight: TE 16x16 tiles, fouroversix its rule)
- activation:  ||deq(Q_in(x)) - x|| / ||x||         (row-wise, 1x16 blocks)
- output:      the inference module's y against x W^T
- dgrad, wgrad: the training module's dx and dW against dy W and dy^T x (stochastic rounding: the
  mean and spread over --draws seeds)
Relative Frobenius errors. Data: "normal" (x, dy ~ N(0,1), W ~ N(0, 1/K)), "outlier channels"
(1% of x's channels scaled by 20, as activations with outlier features), "student-t3" (heavy tails).

    python benchmarks/te_vs_fouroversix.py            # CPU, ~2 min
"""
from __future__ import annotations

import argparse
import copy
import platform
import time

import torch
from torch import nn

from longlive.quant import nvfp4
from longlive.structure import structure
from longlive_plugins.quant_4o6.format import FourOverSixFormat
from longlive_plugins.quant_4o6.plugin import Quant4o6Config
from longlive_plugins.quant_te.emulated import quantize_rowwise
from longlive_plugins.quant_te.format import TENVFP4Format
from longlive_plugins.quant_te.plugin import QuantTEConfig
from longlive_plugins.quant_te.recipe import operand_rules

TE_46 = {"disable_rht": True, "disable_stochastic_rounding": True, "nvfp4_4over6": "all"}
RULE_SETS = [  # (label, plugin, table)
    ("TE default (2D W, SR+RHT grads)", "te", {}),
    ("TE 1D weights", "te", {"disable_2d_quantization": True}),
    ("TE no RHT", "te", {"disable_rht": True}),
    ("TE no SR", "te", {"disable_stochastic_rounding": True}),
    ("TE no RHT, no SR", "te", {"disable_rht": True, "disable_stochastic_rounding": True}),
    ("TE 4/6 all, MAE (no RHT, no SR)", "te", TE_46),
    ("TE 4/6 all, MSE (no RHT, no SR)", "te", {**TE_46, "nvfp4_4over6_err_mode": "MSE"}),
    ("fouroversix default (mse)", "4o6", {}),
    ("fouroversix static_6", "4o6", {"weight_scale_rule": "static_6", "activation_scale_rule": "static_6",
                                     "gradient_scale_rule": "static_6"}),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _data(kind: str, tokens: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "student-t3":
        torch.manual_seed(seed)
        x = torch.distributions.StudentT(3.0).sample((tokens, k))
    else:
        x = torch.randn(tokens, k, generator=g)
    if kind == "outlier channels":
        x[:, torch.randperm(k, generator=g)[: max(1, k // 100)]] *= 20
    w = torch.randn(n, k, generator=g) * k**-0.5
    dy = torch.randn(tokens, n, generator=g)
    return x, w, dy


def _tensor_errors(plugin: str, fmt, x: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    if plugin == "te":
        rules = operand_rules(fmt.config)
        return (_rel(nvfp4.dequantize(quantize_rowwise(w, rules.weight)), w),
                _rel(nvfp4.dequantize(quantize_rowwise(x, rules.input)), x))
    c = fmt.config  # fouroversix's rules through the core reference (bit-identical to fouroversix, tested)
    return (_rel(nvfp4.dequantize(nvfp4.quantize(w, scale_rule=c.weight_scale_rule, block_2d=c.weight_scale_2d)), w),
            _rel(nvfp4.dequantize(nvfp4.quantize(x, scale_rule=c.activation_scale_rule)), x))


def measure(plugin: str, table: dict, x, w, dy, draws: int) -> dict[str, float]:
    fmt = (TENVFP4Format(structure(table, QuantTEConfig, where="plugins.quant_te")) if plugin == "te" else
           FourOverSixFormat(structure(table, Quant4o6Config, where="plugins.quant_4o6")))
    linear = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(w)
    weight_err, act_err = _tensor_errors(plugin, fmt, x, w)
    with torch.no_grad():
        y = fmt.convert(copy.deepcopy(linear), role="generator", training=False, path="emulate")(x.unsqueeze(0))[0]
    exact_y, exact_dx, exact_dw = x.double() @ w.double().t(), dy.double() @ w.double(), dy.double().t() @ x.double()
    train = fmt.convert(copy.deepcopy(linear), role="generator", training=True, path="emulate")
    dx_err, dw_err = [], []
    for seed in range(draws):
        torch.manual_seed(seed)
        xi = x.unsqueeze(0).clone().requires_grad_(True)  # [1, T, K]: fouroversix's training path wants batch 1
        train.weight.grad = None
        train(xi).backward(dy.unsqueeze(0))
        dx_err.append(_rel(xi.grad[0], exact_dx))
        dw_err.append(_rel(train.weight.grad, exact_dw))
    dx_t, dw_t = torch.tensor(dx_err), torch.tensor(dw_err)
    return {"weight": weight_err, "activation": act_err, "output": _rel(y, exact_y),
            "dgrad": dx_t.mean().item(), "dgrad_sd": dx_t.std().item() if draws > 1 else 0.0,
            "wgrad": dw_t.mean().item(), "wgrad_sd": dw_t.std().item() if draws > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); x [{args.tokens}, {args.k}], "
          f"W [{args.n}, {args.k}], gradients: mean +- sd over {args.draws} draws")
    for kind in ("normal", "outlier channels", "student-t3"):
        x, w, dy = _data(kind, args.tokens, args.k, args.n, args.seed)
        print(f"\n## {kind}\n| rules | weight | activation | output | dgrad | wgrad |\n|---|---|---|---|---|---|")
        for label, plugin, table in RULE_SETS:
            r = measure(plugin, table, x, w, dy, args.draws)
            print(f"| {label} | {r['weight']:.4f} | {r['activation']:.4f} | {r['output']:.4f} | "
                  f"{r['dgrad']:.4f} +- {r['dgrad_sd']:.4f} | {r['wgrad']:.4f} +- {r['wgrad_sd']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
