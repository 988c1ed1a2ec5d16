"""Prompt latency and page frame rate of `longlive live`, measured in headless Chromium.

Starts `python -m longlive live EXPERIMENT` (extra `--set` values passed through), opens the page
in Debian's chromium through Playwright, waits for `--warmup` frames, then types `--prompts`
prompts (alternating two captions, each a motion switch), one every `--every` seconds, and
prints, per prompt, the seconds from submit to the first frame under it (as the page sees it),
and the frames per second delivered to the page. Stops the stream at the end (it is saved).

    OMP_NUM_THREADS=1 python benchmarks/live_page.py experiments/live_toy.toml --set run.threads=1
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
CAPTIONS = ("a small red circle moves left steadily and bounces on a dark blue background",
            "a small red circle moves right steadily and bounces on a dark blue background")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--every", type=float, default=4.0, help="seconds between prompts")
    parser.add_argument("--warmup", type=int, default=8, help="frames before the first prompt")
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    command = [sys.executable, "-m", "longlive", "live", args.experiment, "--port", "0"]
    command += [item for o in args.overrides for item in ("--set", o)]
    command += ["--run-dir", args.run_dir] if args.run_dir else []
    live = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = None
    for line in live.stdout:
        if line.startswith("live: open "):
            url = line.split()[2]
            break
    if url is None:
        sys.exit("live did not start")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=FLAGS)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function(f"window.liveStats.framesReceived >= {args.warmup}", timeout=300_000)
            for i in range(args.prompts):
                page.fill("#prompt", CAPTIONS[i % 2])
                page.press("#prompt", "Enter")
                page.wait_for_function(f"Object.keys(window.liveStats.latencies).length >= {i + 1}", timeout=300_000)
                time.sleep(max(0.0, args.every - 0.0))
            stats = page.evaluate("window.liveStats")
            page.click("#stop")
            page.wait_for_function("window.liveStats.state === 'finished'", timeout=300_000)
            browser.close()
    finally:
        live.wait(timeout=300)
    latencies = list(stats["latencies"].values())
    seconds = (stats["lastFrameAt"] - stats["firstFrameAt"]) / 1000
    status = stats["lastStatus"]
    print(f"cpu: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; {' '.join(args.overrides)}")
    print(f"prompt submit -> first frame under it: {', '.join(f'{s:.2f}' for s in latencies)} s "
          f"(median {statistics.median(latencies):.2f}, max {max(latencies):.2f})")
    print(f"frames delivered to the page: {stats['framesReceived']} in {seconds:.1f} s = "
          f"{(stats['framesReceived'] - 1) / seconds:.2f} frames/s (video {status['fps']} fps)")
    print(f"generation speed: {status['speed']}x real time ({status['video_seconds']} s of video in "
          f"{status['busy_seconds']} s)")


if __name__ == "__main__":
    main()
