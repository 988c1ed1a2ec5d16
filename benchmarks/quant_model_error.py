"""Quantization formats on a whole model: the output error against high precision with the SAME history.

Trajectories drift apart once anything differs, so this measures one step per chunk instead (as
benchmarks/kv_fp4_model_error.py does for the cache): the video is generated once by the
unquantized model; then the unquantized model and each quantized copy (same weights: the
checkpoint, or the run's seeded random weights) are fed that video's clean chunks as their
history, and for every chunk the first denoising forward (same noise, prompt, timestep) runs in
each. Reported per format: the relative L2 error of the model output (velocity) against the
unquantized model's, mean / max over chunks, and the first chunk's.

    python benchmarks/quant_model_error.py --experiment experiments/bench/bf16_5b.toml --formats fp8_rowwise \
        --set model.compile=false --chunks 6 --out result.json
    python benchmarks/quant_model_error.py --experiment experiments/quickstart.toml \
        --formats fouroversix fp8_rowwise mxfp4 --plugins quant_4o6 quant_fp8 quant_mxfp4 --device cpu
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from longlive.assembly import build_parts, new_chunk_loop
    from longlive.config import load_experiment
    from longlive.pipeline import chunk_noise
    from longlive.prompts import chunk_prompts, single_prompt
    from longlive.quant.format import forward_context
    from longlive.run import make_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--formats", nargs="+", required=True, help="quant_format names for quant.generator")
    parser.add_argument("--plugins", nargs="*", default=[], help="plugins to add (those providing the formats)")
    parser.add_argument("--device", default=None, help="override run.device")
    parser.add_argument("--mode", default="auto", choices=("auto", "real", "emulate"))
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    base = load_experiment(args.experiment, args.overrides)
    plugins = list(base.run.plugins) + [p for p in args.plugins if p not in base.run.plugins]

    def loop_for(fmt: str):
        sets = list(args.overrides) + [f"run.plugins={json.dumps(plugins)}", f'quant.generator="{fmt}"',
                                        f'quant.mode="{args.mode}"']
        if args.device:
            sets.append(f'run.device="{args.device}"')
        run = make_run(load_experiment(args.experiment, sets), create_dir=False)
        parts = build_parts(run)
        loop = new_chunk_loop(run, model=parts.model, sampler=parts.sampler, text=parts.text, geometry=parts.geometry)
        return run, parts, loop

    run, parts, ref = loop_for("none")
    s = run.experiment.sampler
    frames = args.chunks * s.frames_per_chunk
    schedule = chunk_prompts(single_prompt("a red cube slides to the left", frames), num_frames=frames,
                             frames_per_chunk=s.frames_per_chunk)
    shape = parts.geometry.latent_shape(s.frames_per_chunk, parts.latent_channels, 1)
    noise = [chunk_noise(shape, c.index, run.experiment.run.seed, run.device, run.dtype) for c in schedule]
    with torch.inference_mode():
        history = [ref.step(c, noise[c.index]) for c in schedule]  # the unquantized model's video
    loops = {"none": loop_for("none")[2]}
    del ref
    reports = {}
    for fmt in args.formats:
        fmt_run, _, loops[fmt] = loop_for(fmt)
        reports[fmt] = fmt_run.quant.get("generator")
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in loops}
    with torch.inference_mode():
        for chunk in schedule:
            for name, loop in loops.items():
                state = loop.state
                state.chunk_index, state.prompt = chunk.index, chunk.prompt
                with forward_context(state.model):
                    context = state.context(chunk.prompt)
                    kv = state.cache.begin(chunk.index)
                    x, t = loop._model_input(noise[chunk.index], float(state.sampler.timesteps[0]))
                    outputs[name].append(state.model.forward_chunk(x, t, context, text_embedded=True, kv=kv).float())
                    loop.commit(history[chunk.index], context, kv)  # the same clean history in every cache
    result = {"experiment": args.experiment, "overrides": args.overrides, "device": str(run.device),
              "device_name": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
              "dtype": str(run.dtype), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "chunks": len(schedule), "formats": {}}
    for fmt in args.formats:
        errors = [float((a - b).norm() / b.norm()) for a, b in zip(outputs[fmt], outputs["none"])]
        result["formats"][fmt] = {"mean": sum(errors) / len(errors), "max": max(errors), "first_chunk": errors[0],
                                  "per_chunk": errors, "quant": reports[fmt]}
        print(fmt, f"relative output error: mean {result['formats'][fmt]['mean']:.4f}, max "
              f"{result['formats'][fmt]['max']:.4f}, first chunk {errors[0]:.4f} ({reports[fmt]['path']} path)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
