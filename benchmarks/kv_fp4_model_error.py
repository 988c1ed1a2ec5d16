"""kv_fp4 on a real model: the model's output error against the BF16 cache with the SAME history.

Generation trajectories drift apart once anything differs (benchmarks/kv_fp4_error.py), so this
measures one step instead: the video is generated once with the BF16 cache; both caches (BF16 and
NVFP4) are then fed that video's clean chunks (the same committed history), and for every chunk
the first denoising forward (t = 999, the same noise and prompt) is run against each cache. The
relative L2 error of the model output (velocity) against the BF16 cache's output is reported per
chunk, for each scale rule.

    python benchmarks/kv_fp4_model_error.py --experiment experiments/quickstart.toml --out result.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from longlive.assembly import build_parts, new_chunk_loop
    from longlive.config import load_experiment
    from longlive.pipeline import chunk_noise
    from longlive.prompts import chunk_prompts, load_prompt_script
    from longlive.run import make_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="experiments/quickstart.toml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    def loop_for(plugins: list[str], rule: str | None):
        sets = [f'run.device="{args.device}"', f"run.plugins={json.dumps(plugins)}"]
        if rule:
            sets.append(f'plugins.kv_fp4.scale_rule="{rule}"')
        run = make_run(load_experiment(args.experiment, sets), create_dir=False)
        parts = build_parts(run)
        return run, parts, new_chunk_loop(run, model=parts.model, sampler=parts.sampler, text=parts.text,
                                          geometry=parts.geometry)

    run, parts, ref_loop = loop_for(["toyworld"], None)
    s = run.experiment.sampler
    schedule = chunk_prompts(load_prompt_script(run.experiment.generate.prompt_script), num_frames=s.num_frames,
                             frames_per_chunk=s.frames_per_chunk)
    shape = parts.geometry.latent_shape(s.frames_per_chunk, parts.latent_channels, 1)
    noise = [chunk_noise(shape, c.index, 0, run.device, run.dtype) for c in schedule]
    with torch.inference_mode():
        history = [ref_loop.step(c, noise[c.index]) for c in schedule]  # the BF16 cache's video
    result = {"experiment": args.experiment, "device": args.device, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "chunks": len(schedule)}
    loops = {"bf16": loop_for(["toyworld"], None)[2], "static_6": loop_for(["toyworld", "kv_fp4"], "static_6")[2],
             "mse": loop_for(["toyworld", "kv_fp4"], "mse")[2]}
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in loops}
    with torch.inference_mode():
        for chunk in schedule:
            for name, loop in loops.items():
                state = loop.state
                state.chunk_index, state.prompt = chunk.index, chunk.prompt
                context = state.context(chunk.prompt)
                kv = state.cache.begin(chunk.index)
                x, t = loop._model_input(noise[chunk.index], float(state.sampler.timesteps[0]))
                outputs[name].append(state.model.forward_chunk(x, t, context, text_embedded=True, kv=kv).float())
                loop.commit(history[chunk.index], context, kv)  # the same clean history in every cache
    for rule in ("static_6", "mse"):
        errors = [float((a - b).norm() / b.norm()) for a, b in zip(outputs[rule], outputs["bf16"])]
        result[rule] = {"mean": sum(errors) / len(errors), "max": max(errors), "first_chunk": errors[0],
                        "after_first_window": sum(errors[4:]) / max(1, len(errors[4:]))}
        print(rule, json.dumps(result[rule]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
