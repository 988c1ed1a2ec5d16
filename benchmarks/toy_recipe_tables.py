"""The tables of issue #21 item 4 (docs/toyworld.md) from saved results: held-out ToyBench of
several models with standard errors and per-clip paired differences, and two-minute drift per
10-s segment.

    python benchmarks/toy_recipe_tables.py eval NAME=toy_eval.json ... [--reference NAME]
    python benchmarks/toy_recipe_tables.py drift NAME=toybench.json ...

`eval`: one row per toy_eval.json (`plugins/toyworld/heldout.py`): mean ± standard error over its
clips of each ToyBench metric and, when the json has them, of the first-frame scores
(`first_frame.py`). With `--reference`, a second table gives each model's per-clip difference
from the reference's on the clips both scored (the first n; the clips of one seed are the same
scenes and the same noise), mean ± standard error of the differences: a paired comparison, far
tighter than comparing two means when the models are close.
`drift`: "quality" (the mean of the five ToyBench metrics) and motion of every 10-s segment of a
two-minute video's toybench.json, plus the first- and last-third means and their difference.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

METRICS = ("color", "shape", "motion", "persistence", "background")
FIRST = ("color_kept", "shape_kept", "position_kept", "all_kept", "position_error_px")


def _stats(values: list) -> tuple[float, float, int]:
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not x:
        return math.nan, math.nan, 0
    mean = sum(x) / len(x)
    if len(x) < 2:
        return mean, math.nan, len(x)
    var = sum((v - mean) ** 2 for v in x) / (len(x) - 1)
    return mean, math.sqrt(var / len(x)), len(x)


def _cell(mean: float, err: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "-"
    mean = 0.0 if round(mean, digits) == 0 else mean  # no "-0.000"
    return f"{mean:.{digits}f}" if math.isnan(err) else f"{mean:.{digits}f} ± {err:.{digits}f}"


def _per_clip(data: dict, key: str) -> list:
    first = key in FIRST
    return [((c.get("first_frame") or {}).get(key) if first else c.get(key)) for c in data["per_clip"]]


def eval_tables(named: list[tuple[str, dict]], reference: str | None) -> str:
    has_first = any(d.get("first_frame") for _, d in named)
    keys = METRICS + (FIRST if has_first else ())
    head = "| model | clips | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 2)]
    for name, d in named:
        lines.append(f"| {name} | {d['clips']} | " + " | ".join(
            _cell(*_stats(_per_clip(d, k))[:2], digits=1 if k == "position_error_px" else 3) for k in keys) + " |")
    if reference is None:
        return "\n".join(lines)
    ref = dict(named)[reference]
    lines += ["", f"Per-clip paired difference from {reference} (mean ± standard error over the common clips):", "",
              "| model | clips | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for name, d in named:
        if name == reference:
            continue
        n = min(len(d["per_clip"]), len(ref["per_clip"]))
        cells = []
        for k in keys:
            a, b = _per_clip(d, k)[:n], _per_clip(ref, k)[:n]
            diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None]
            cells.append(_cell(*_stats(diffs)[:2], digits=1 if k == "position_error_px" else 3))
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def drift_table(named: list[tuple[str, dict]]) -> str:
    segments = max(len(d["segments"]) for _, d in named)
    third = max(1, segments // 3)
    head = ("| model | " + " | ".join(f"{i * 10}-{i * 10 + 10} s" for i in range(segments))
            + " | first third | last third | drift |")
    lines = [head, "|" + "---|" * (segments + 4)]
    for name, d in named:
        for label, quality in (("quality", True), ("motion", False)):
            vals = []
            for seg in d["segments"]:
                v = [seg[m] for m in METRICS] if quality else [seg["motion"]]
                v = [x for x in v if x is not None]
                vals.append(sum(v) / len(v) if v else math.nan)
            first, last = _stats(vals[:third])[0], _stats(vals[-third:])[0]
            lines.append(f"| {name} {label} | " + " | ".join("-" if math.isnan(v) else f"{v:.3f}" for v in vals)
                         + f" | {first:.3f} | {last:.3f} | {first - last:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("eval", "drift"))
    parser.add_argument("results", nargs="+", help="NAME=path to toy_eval.json (eval) or toybench.json (drift)")
    parser.add_argument("--reference", help="eval: the NAME the paired differences are taken from")
    args = parser.parse_args()
    named = []
    for item in args.results:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"{item!r}: give NAME=path")
        named.append((name, json.loads(Path(path).read_text())))
    if args.reference is not None and args.reference not in dict(named):
        parser.error(f"--reference {args.reference!r} names none of {', '.join(n for n, _ in named)}")
    print(eval_tables(named, args.reference) if args.kind == "eval" else drift_table(named))


if __name__ == "__main__":
    main()
