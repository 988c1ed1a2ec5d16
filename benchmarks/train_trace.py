"""Loss traces, checkpoint keys and export hashes of three short CPU training runs (teacher forcing:
full model; LoRA; warmup + EMA + checkpoints), to compare a refactor of the trainer bit for bit.

Run it at two commits (same machine, run.threads pinned to 1) and compare the JSON files:

    python benchmarks/train_trace.py before.json /tmp/trace_before     # at the old commit
    python benchmarks/train_trace.py after.json /tmp/trace_after       # at the new one
    cmp before.json after.json
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))


def main() -> None:
    import torch
    from safetensors.torch import load_file

    from longlive.train.trainer import run_training
    from toy_setup import LossLog, make_toy_run, toy_table, write_toy_shards

    out, work = Path(sys.argv[1]), Path(sys.argv[2])
    data = write_toy_shards(work / "shards", num_clips=8, clips_per_shard=4, frames=8)
    result = {}
    variants = (("full", {}), ("lora", {"lora_rank": 4, "ema_decay": 0.5}),
                ("resume", {"save_every": 2, "ema_decay": 0.5, "warmup_steps": 3}))
    for name, extra in variants:
        log = LossLog()
        table = toy_table(data, steps=6, **extra)
        table["run"]["threads"] = 1  # the automatic thread count depends on the load: reductions would differ
        run_training(make_toy_run(table, work / name, log))
        weights = load_file(work / name / "model.safetensors")
        digest = hashlib.sha256(b"".join(weights[k].numpy().tobytes() for k in sorted(weights))).hexdigest()
        state = torch.load(work / name / "checkpoints" / "last.pt", weights_only=True)
        result[name] = {"losses": [log.losses[s] for s in sorted(log.losses)], "export_sha": digest,
                        "ckpt_keys": sorted(state)}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
