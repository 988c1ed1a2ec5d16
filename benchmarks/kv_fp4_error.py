"""kv_fp4 error against the BF16 cache: attention output on random data, and generation with a model.

1. Attention output (random data): one chunk's queries against a window of K/V held in BF16 vs
   NVFP4 (every slot but the chunk's own quantized), per scale rule; relative L2 error of the
   SDPA output, for plain N(0,1) keys and for keys with per-channel outliers (key-like).
2. Generation (`--experiment`, e.g. experiments/quickstart.toml or the toy eval): the same
   prompt schedule with the BF16 cache and with kv_fp4, relative L2 error of each chunk's clean
   latents; with `--frames 1000 --relative-rope` the error over a long relative-RoPE video
   with sinks (cached keys re-quantized whenever the policy turns them).

    python benchmarks/kv_fp4_error.py --experiment experiments/quickstart.toml --device cuda --out kv.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RULES = ("static_6", "mse")


def attention_error(device: str, heads: int = 24, head_dim: int = 128, tokens: int = 880, slots: int = 4) -> dict:
    from longlive.cache import CacheSpec, ChunkPlan
    from longlive_plugins.kv_fp4.storage import NVFP4Storage

    out = {}
    g = torch.Generator(device="cpu").manual_seed(0)
    for kind in ("normal", "outlier_channels"):
        scale = torch.ones(head_dim) if kind == "normal" else 1 + 8 * (torch.rand(head_dim, generator=g) > 0.95)
        k = (torch.randn(1, slots * tokens, heads, head_dim, generator=g) * scale).to(device, torch.bfloat16)
        v = torch.randn(1, slots * tokens, heads, head_dim, generator=g).to(device, torch.bfloat16)
        q = torch.randn(1, tokens, heads, head_dim, generator=g).to(device, torch.bfloat16)
        ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        for rule in RULES:
            spec = CacheSpec(num_layers=1, batch=1, num_heads=heads, head_dim=head_dim, chunk_tokens=tokens,
                             frames_per_chunk=1, num_slots=slots, dtype=torch.bfloat16, device=device)
            storage = NVFP4Storage(spec, scale_rule=rule)
            for s in range(slots - 1):
                storage.write(0, s, k[:, s * tokens:(s + 1) * tokens], v[:, s * tokens:(s + 1) * tokens])
            plan = ChunkPlan(chunk_index=slots - 1, working_slot=slots - 1, visible_slots=tuple(range(slots)),
                             rope_start_frame=0)
            own = slice((slots - 1) * tokens, slots * tokens)
            kk, vv = storage.attend(0, plan, k[:, own], v[:, own], keep=False)
            got = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), kk.transpose(1, 2),
                                                                    vv.transpose(1, 2))
            out[f"{kind}/{rule}"] = float((got.float() - ref.float()).norm() / ref.float().norm())
    return out


def generation_error(experiment: str, device: str, frames: int | None, relative_rope: bool) -> dict:
    from longlive.assembly import build_parts, new_chunk_loop
    from longlive.config import load_experiment
    from longlive.pipeline import chunk_noise
    from longlive.prompts import chunk_prompts, load_prompt_script, single_prompt
    from longlive.run import make_run

    def run_with(plugins: list[str], tables: list[str]) -> tuple[list[torch.Tensor], float]:
        sets = [f'run.device="{device}"', f"run.plugins={json.dumps(plugins)}", *tables]
        if frames:
            sets += [f"sampler.num_frames={frames}"]
        exp = load_experiment(experiment, sets)
        run = make_run(exp, create_dir=False)
        parts = build_parts(run)
        loop = new_chunk_loop(run, model=parts.model, sampler=parts.sampler, text=parts.text, geometry=parts.geometry)
        s = exp.sampler
        if frames:
            script = single_prompt("a small red circle moves right steadily and bounces on a dark blue background",
                                   frames)
        else:
            script = load_prompt_script(exp.generate.prompt_script)
        shape = parts.geometry.latent_shape(s.frames_per_chunk, parts.latent_channels, 1)
        started, outs = time.perf_counter(), []
        with torch.inference_mode():
            for chunk in chunk_prompts(script, num_frames=s.num_frames, frames_per_chunk=s.frames_per_chunk):
                outs.append(loop.step(chunk, chunk_noise(shape, chunk.index, 0, run.device, run.dtype)).float().cpu())
        return outs, time.perf_counter() - started

    sink = ['plugins.attn_sink.relative_rope=true', 'plugins.attn_sink.sink_frames=4',
            'plugins.attn_sink.shot_sink_frames=4', 'plugins.attn_sink.rope_shift_frames=4'] if relative_rope else []
    plugins = (["toyworld", "attn_sink"] if relative_rope else ["toyworld"])
    ref, ref_s = run_with(plugins, sink)
    result = {"chunks": len(ref), "bf16_seconds": ref_s}
    for rule in RULES:
        got, got_s = run_with(plugins + ["kv_fp4"], sink + [f'plugins.kv_fp4.scale_rule="{rule}"'])
        errors = [float((a - b).norm() / b.norm()) for a, b in zip(got, ref)]
        n = len(errors)
        result[rule] = {"seconds": got_s, "mean": sum(errors) / n, "max": max(errors),
                        "by_quarter": [sum(errors[i * n // 4:(i + 1) * n // 4]) / max(1, n // 4) for i in range(4)]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--experiment", default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--relative-rope", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = {"device": args.device, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "attention_5b_head_shapes": attention_error(args.device)}
    print(json.dumps(result["attention_5b_head_shapes"]), flush=True)
    if args.experiment:
        result["generation"] = generation_error(args.experiment, args.device, args.frames, args.relative_rope)
        print(json.dumps(result["generation"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
