"""torchrun entry of test_ulysses.py: chunked generation under Ulysses SP against one device.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=N sp_worker.py OUT.json SCENARIO...
Every rank builds the run through the real `make_run` (parallel.sp = N: the core's device mesh,
gloo, the sp_balanced layout) and generates; rank 0 also generates with the single-device
layout (same model object, same inputs) and writes OUT.json:
    {scenario: {"max_abs_diff": float, "ref_norm": float, "finite": bool, "chunks": int,
                "traffic": last chunk's counted traffic, "expected": the traffic formula's bytes}}
Scenarios: plain, sinks (sinks + shot sinks + relative RoPE + re-cache + cut), kv_fp4 (against
single-device kv_fp4), cfg (guidance 3, batch 2), i2v (an image latent as frame 0), fp8 (K and V
exchanged as FP8: "relative_error" measures what that changes). Always, after
them: "autograd" (gradients through the layout's collectives, every rank: {"round_trip", "max_grad_error"}).
"""
from __future__ import annotations

import json
import sys

import attrs
import torch

PRESET = "small"  # 4 heads: splits over 2 and 4 ranks
SAMPLER = {"height": 64, "width": 64, "frames_per_chunk": 2, "window_frames": 6, "steps": 2, "name": "unipc"}
SINKS = {"sink_frames": 2, "shot_sink_frames": 2, "rope_shift_frames": 2, "relative_rope": True,
         "recache_on_switch": True, "clear_window_on_cut": True}


def _table(world: int, plugins: list[str], tables: dict, sampler: dict) -> dict:
    """The experiment of a scenario: the small DiT in fp32 on the CPU, parallel.sp = world."""
    return {"run": {"name": "sp", "task": "generate", "device": "cpu", "dtype": "fp32", "threads": 1,
                    "plugins": ["sp_balanced", *plugins]},
            "model": {"preset": PRESET, "codec": "wan2.2-vae-debug", "text_encoder": "random", "attention": "sdpa"},
            "sampler": {**SAMPLER, **sampler},
            "generate": {"prompt": "unused"},
            "parallel": {"sp": world},
            "plugins": tables}


def _script(frames: int):
    from longlive.prompts import PromptScript, Shot, Switch

    half = frames // 2
    return PromptScript(shot=(Shot(prompt="a red circle", frames=half, switches=(Switch(at_frame=4, prompt="blue"),)),
                              Shot(prompt="a green square", frames=frames - half)))


def _generate(run, model, script, *, batch: int, image_latent=None) -> list[torch.Tensor]:
    from longlive.assembly import build_sampler, build_text_encoder, new_chunk_loop
    from longlive.pipeline import chunk_noise
    from longlive.prompts import chunk_prompts

    s = run.experiment.sampler
    loop = new_chunk_loop(run, model=model, sampler=build_sampler(run), text=build_text_encoder(run),
                          geometry=run.geometry, batch=batch, image_latent=image_latent)
    shape = run.geometry.latent_shape(s.frames_per_chunk, 48, batch)
    with torch.inference_mode():
        return [loop.step(c, chunk_noise(shape, c.index, run.experiment.run.seed, run.device, run.dtype))
                for c in chunk_prompts(script, num_frames=script.total_frames, frames_per_chunk=s.frames_per_chunk)]


def scenario(name: str) -> tuple[list[str], dict, dict, int, bool]:
    """plugins, plugin tables, sampler overrides, batch, i2v."""
    return {
        "plain": ([], {}, {}, 1, False),
        "sinks": (["attn_sink"], {"attn_sink": SINKS}, {"window_frames": 8}, 1, False),
        "kv_fp4": (["kv_fp4", "attn_sink"], {"kv_fp4": {"scale_rule": "mse"}, "attn_sink": SINKS},
                   {"window_frames": 8}, 1, False),
        "cfg": ([], {}, {"guidance": 3.0}, 2, False),
        "i2v": ([], {}, {}, 1, True),
        "fp8": ([], {"sp_balanced": {"kv_exchange": "fp8"}}, {}, 1, False),
    }[name]


def main(out: str, names: list[str]) -> None:
    from longlive.assembly import build_model
    from longlive.config import experiment_from_table
    from longlive.distributed import close_mesh
    from longlive.layout import SingleDeviceLayout
    from longlive.run import make_run
    from longlive_plugins.sp_balanced.traffic import chunk_traffic

    torch.set_num_threads(1)
    results, meshes = {}, []
    for name in names:
        plugins, tables, sampler, batch, i2v = scenario(name)
        frames = 12
        run = make_run(experiment_from_table(_table(_world(), plugins, tables, {**sampler, "num_frames": frames})),
                       create_dir=False)
        meshes.append(run.mesh)
        model = build_model(run)
        image = None
        if i2v:
            g = torch.Generator().manual_seed(5)
            image = torch.randn(batch, 48, 1, 4, 4, generator=g)
        got = _generate(run, model, _script(frames), batch=batch, image_latent=image)
        if run.mesh.rank != 0:
            continue
        sp_plugin = run.pm.get_plugin("sp_balanced")
        single = attrs.evolve(run, layout=SingleDeviceLayout())
        ref = _generate(single, model, _script(frames), batch=batch, image_latent=image)
        diff = max(float((a - b).abs().max()) for a, b in zip(got, ref))
        rel = float((torch.cat(got, 2) - torch.cat(ref, 2)).norm() / torch.cat(ref, 2).norm())
        s, preset = run.experiment.sampler, run.preset
        expected = chunk_traffic(sp=run.mesh.sp, num_layers=preset.num_layers, num_heads=preset.num_heads,
                                 head_dim=preset.head_dim, chunk_tokens=run.geometry.chunk_tokens, batch=batch,
                                 cfg=s.guidance != 1.0, steps=s.steps, head_channels=preset.patch_channels,
                                 element_bytes=4, kv_exchange=run.layout.kv_exchange)
        results[name] = {"max_abs_diff": diff, "relative_error": rel, "ref_norm": float(torch.cat(ref, 2).norm()),
                         "finite": all(bool(torch.isfinite(a).all()) for a in got), "chunks": len(got),
                         "traffic": sp_plugin.last_chunk, "expected": expected.total,
                         "layout": run.layout.describe()}
    results["autograd"] = _autograd(run.layout)
    if _rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    close_mesh(meshes[0])


def _autograd(layout) -> dict:
    """Backward through the layout's collectives (for training, part 2): with the same tensor R on
    every rank, d/dx sum(R * seq_to_heads(x)), d/dy sum(R' * heads_to_seq(y)) and d/dx sum(R * gather(x))
    must be R's rows (and heads) that x or y holds on this rank; the round trip must be exact."""
    sp, r = layout.sp, layout.sp_rank
    g = torch.Generator().manual_seed(7)
    batch, tokens, heads, dim = 2, 4 * sp, 2 * sp, 3
    full = torch.randn(batch, tokens, heads, dim, generator=g)  # the same on every rank
    rows = slice(r * tokens // sp, (r + 1) * tokens // sp)
    cols = slice(r * heads // sp, (r + 1) * heads // sp)
    x = full[:, rows].clone().requires_grad_(True)
    y = layout.seq_to_heads(x)
    round_trip = float((layout.heads_to_seq(y) - x).detach().abs().max())
    weight = torch.randn(batch, tokens, heads, dim, generator=g)
    (y * weight[:, :, cols]).sum().backward()
    errors = [float((x.grad - weight[:, rows]).abs().max()), float((y - full[:, :, cols]).detach().abs().max())]
    z = full[:, :, cols].clone().requires_grad_(True)
    (layout.heads_to_seq(z) * weight[:, rows]).sum().backward()
    errors.append(float((z.grad - weight[:, :, cols]).abs().max()))
    w = full[:, rows, 0].clone().requires_grad_(True)
    (layout.gather(w) * weight[:, :, 0]).sum().backward()
    errors.append(float((w.grad - weight[:, rows, 0]).abs().max()))
    return {"round_trip": round_trip, "max_grad_error": max(errors)}


def _world() -> int:
    import os

    return int(os.environ["WORLD_SIZE"])


def _rank() -> int:
    import os

    return int(os.environ["RANK"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
