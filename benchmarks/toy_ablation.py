"""Toy-world ablations of attn_sink: run experiments/ablations/*.toml, score them, write docs/ablations.{md,png}.

    python benchmarks/toy_ablation.py --checkpoint plugins/toyworld/weights/toy_ar.safetensors

Every variant generates the same two-minute multi-shot video with prompt switches (same seed,
same attention budget) and the toyworld plugin scores it with ToyBench per 10-second segment and
per prompt change. The report has one quality number per segment and variant (the mean of colour,
shape, motion, persistence and background accuracy), the drift from the first to the last third
of the video, and the frames each variant needs to show a new prompt after a cut or a switch.
Without --checkpoint the toy DiT has random weights (a smoke test of this script: every score is 0).
`--set section.key=value` is passed to every experiment (e.g. a shorter prompt script).
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("color", "shape", "motion", "persistence", "background")
log = logging.getLogger("toy_ablation")


def quality(scores: dict) -> float:
    """Mean of the ToyBench metrics that were scored (None = not scored, e.g. motion near walls)."""
    values = [scores[m] for m in METRICS if scores.get(m) is not None]
    return sum(values) / len(values) if values else math.nan


def run_variant(path: Path, overrides: list[str], run_dir: Path) -> dict:
    """Generate and score one experiment; returns what the report needs."""
    from longlive.config import load_experiment
    from longlive.run import make_run, run_task

    exp = load_experiment(path, overrides)
    run = make_run(exp, run_dir=run_dir)
    started = time.perf_counter()
    result = run_task(run)
    if "toybench" not in result:
        raise SystemExit(f"{path}: no ToyBench scores; the experiment must list the toyworld plugin with score = true")
    fpc, stride = exp.sampler.frames_per_chunk, run.plugin_configs["toyworld"].temporal_factor
    events = [("cut" if c.shot_start else "switch", 0 if c.index == 0 else 1 + stride * (c.index * fpc - 1))
              for c in result["schedule"] if c.index > 0 and (c.shot_start or c.switch)]
    sink = run.plugin_configs.get("attn_sink")
    return {"name": path.stem, "what": _describe(path), "toybench": result["toybench"], "events": events,
            "seconds": time.perf_counter() - started, "fps": exp.generate.fps, "num_frames": exp.sampler.num_frames,
            "attn_sink": None if sink is None else _settings(sink)}


def _settings(config) -> dict:
    """The budgets, and the switches that are on (the rest of the table is at its off default)."""
    import attrs

    table = attrs.asdict(config)
    return {k: v for k, v in table.items() if k.endswith("_frames") or v is True or (isinstance(v, str) and v)}


def _describe(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return first.split(":", 1)[1].strip() if ":" in first else first.lstrip("# ")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _third(segments: list[dict], which: int) -> float:
    """Mean quality over the first (0) or last (2) third of the segments."""
    n = max(1, len(segments) // 3)
    part = segments[:n] if which == 0 else segments[-n:]
    values = [quality(s) for s in part if not math.isnan(quality(s))]
    return sum(values) / len(values) if values else math.nan


def _responses(result: dict) -> dict[int, int | None]:
    """Frames to match by event frame (cuts and switches), from ToyBench's per-change responses."""
    return {s["frame"]: s["frames_to_match"] for s in result["toybench"]["switches"]}


def _mean_response(result: dict, kind: str) -> float:
    got = _responses(result)
    done = [got.get(frame) for k, frame in result["events"] if k == kind]
    done = [d for d in done if d is not None]
    return sum(done) / len(done) if done else math.nan


def write_markdown(results: list[dict], path: Path, header: str) -> Path:
    names = [r["name"] for r in results]
    first = results[0]
    segs = first["toybench"]["segments"]
    fps = first["fps"]
    lines = ["# attn_sink ablations on the toy world", "", header, "", "## Variants", "",
             "| variant | [plugins.attn_sink] | what | wall time (s) |", "|---|---|---|---|"]
    for r in results:
        table = "plugin off" if r["attn_sink"] is None else ", ".join(f"{k}={v}" for k, v in r["attn_sink"].items())
        lines.append(f"| {r['name']} | {table} | {r['what']} | {r['seconds']:.0f} |")
    lines += ["", "## Quality per 10-second segment", "",
              "Quality: mean of ToyBench colour, shape, motion, persistence and background accuracy over the "
              "segment's frames (1 = every frame shows what its caption asks for).", "",
              "| segment | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, seg in enumerate(segs):
        span = f"{seg['start_frame'] / fps:.0f}-{seg['end_frame'] / fps:.0f} s"
        lines.append(f"| {span} | " + " | ".join(_fmt(quality(r["toybench"]["segments"][i])) for r in results) + " |")
    lines.append("| first third | " + " | ".join(_fmt(_third(r["toybench"]["segments"], 0)) for r in results) + " |")
    lines.append("| last third | " + " | ".join(_fmt(_third(r["toybench"]["segments"], 2)) for r in results) + " |")
    lines.append("| drift (first - last) | " + " | ".join(
        _fmt(_third(r["toybench"]["segments"], 0) - _third(r["toybench"]["segments"], 2)) for r in results) + " |")
    lines += ["", "## Overall, per metric", "", "| variant | " + " | ".join(METRICS) + " | quality |",
              "|---|" + "---|" * (len(METRICS) + 1)]
    for r in results:
        o = r["toybench"]["overall"]
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(o[m]) for m in METRICS) + f" | {_fmt(quality(o))} |")
    lines += _response_table(results) + _findings(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _response_table(results: list[dict]) -> list[str]:
    names = [r["name"] for r in results]
    fps = results[0]["fps"]
    lines = ["", "## Response to prompt changes", "",
             "Frames after a cut or a switch until colour, shape and background all match the new caption for 3 "
             "frames in a row (`never`: they do not before the next change).", "",
             "| time | kind | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for kind, frame in results[0]["events"]:
        cells = []
        for r in results:
            got = _responses(r).get(frame)
            cells.append("never" if got is None else str(got))
        lines.append(f"| {frame / fps:.1f} s | {kind} | " + " | ".join(cells) + " |")
    for kind, plural in (("cut", "cuts"), ("switch", "switches")):
        lines.append(f"| mean over {plural} answered | | " + " | ".join(
            _fmt(_mean_response(r, kind)) for r in results) + " |")
    return lines


def _findings(results: list[dict]) -> list[str]:
    """Plain comparisons of the numbers above (only for the variants present)."""
    by = {r["name"]: r for r in results}
    lines = ["", "## Findings (computed from the tables above)", ""]
    for a, b in (("window", "sink"), ("window_recache", "sink_recache"), ("sink_recache", "sink_relative")):
        if a in by and b in by:
            qa, qb = (_third(by[n]["toybench"]["segments"], 2) for n in (a, b))
            lines.append(f"- Drift: last-third quality {b} {_fmt(qb)} vs {a} {_fmt(qa)} (difference {qb - qa:+.3f}).")
    for a, b in (("window", "window_recache"), ("sink", "sink_recache")):
        if a in by and b in by:
            ra, rb = (_mean_response(by[n], "switch") for n in (a, b))
            lines.append(f"- Switch response: {b} {_fmt(rb)} frames vs {a} {_fmt(ra)} frames (mean over switches "
                         f"answered; share of changes answered {_fmt(by[b]['toybench']['responded'])} vs "
                         f"{_fmt(by[a]['toybench']['responded'])}).")
    return lines if len(lines) > 3 else []


def plot(results: list[dict], path: Path) -> Path:
    """Quality per segment over time per variant (cuts and switches marked), and frames to respond per change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    drift, resp = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    fps = results[0]["fps"]
    for r in results:
        segs = r["toybench"]["segments"]
        edges = [s["start_frame"] / fps for s in segs] + [segs[-1]["end_frame"] / fps]
        drift.stairs([quality(s) for s in segs], edges, label=r["name"], linewidth=1.6, baseline=None)
    for kind, frame in results[0]["events"]:
        drift.axvline(frame / fps, color="gray", linestyle="--" if kind == "cut" else ":", linewidth=0.8)
    drift.set(xlabel="time (s)  (dashed: cut, dotted: switch)", ylabel="ToyBench quality", ylim=(-0.02, 1.02),
              title="Drift: quality per segment")
    drift.legend(fontsize=8, loc="lower left")
    events = results[0]["events"]
    width = 0.8 / len(results)
    cap = max([1] + [v for r in results for v in _responses(r).values() if v is not None]) * 1.2
    for i, r in enumerate(results):
        got = [_responses(r).get(frame) for _, frame in events]
        xs = [j + i * width for j in range(len(events))]
        resp.bar(xs, [0 if g is None else g for g in got], width, label=r["name"], color=f"C{i}")
        never = [x for x, g in zip(xs, got) if g is None]  # hollow, hatched bars up to the cap
        resp.bar(never, [cap] * len(never), width, fill=False, hatch="//", edgecolor=f"C{i}", linewidth=0.8)
    resp.set_xticks([j + 0.4 - width / 2 for j in range(len(events))],
                    [f"{k}\n{f / fps:.0f}s" for k, f in events], fontsize=7)
    resp.set(ylabel="frames to match (hatched: never)", title="Response to cuts and switches")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="toy DiT weights (random weights when left out)")
    parser.add_argument("--experiments", type=Path, default=ROOT / "experiments" / "ablations")
    parser.add_argument("--only", nargs="*", help="variant names (file stems) to run; default: all")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where ablations.md and .png go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    paths = sorted(args.experiments.glob("*.toml"))
    if args.only:
        paths = [p for p in paths if p.stem in args.only]
    if not paths:
        parser.error(f"no experiments to run in {args.experiments} (--only {args.only})")
    overrides = list(args.overrides)
    if args.checkpoint is not None:
        overrides.append(f'model.checkpoint="{args.checkpoint.resolve()}"')
    else:
        log.warning("no --checkpoint: random weights, every ToyBench score will be about 0 (smoke test)")
    order = ["window", "window_recache", "sink", "sink_shift", "sink_recache", "sink_relative"]
    paths.sort(key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.stem))
    results = []
    for path in paths:
        log.info("variant %s", path.stem)
        results.append(run_variant(path, overrides, args.runs_dir / path.stem))
    weights = f"weights `{args.checkpoint}`" if args.checkpoint else "**random weights** (smoke test only)"
    first = results[0]
    command = " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"Generated by `python benchmarks/{Path(__file__).name} {command}` "
              f"on {time.strftime('%Y-%m-%d')} with {weights}: {first['num_frames']} latent frames "
              f"({first['toybench']['num_frames'] / first['fps']:.0f} s at {first['fps']:g} fps) per variant, "
              f"same seed and attention budget; experiment files in `experiments/ablations/`. "
              f"Plot: `ablations.png`.")
    md = write_markdown(results, args.docs / "ablations.md", header)
    png = plot(results, args.docs / "ablations.png")
    log.info("wrote %s and %s", md, png)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
