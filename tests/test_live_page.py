"""End to end: `longlive live` on the toy world, watched and steered from headless Chromium.

Starts the live command (a subprocess, one torch thread), opens the page in Debian's chromium
(driven by Playwright, which only drives: the browser is /usr/bin/chromium, installed by the
README test command; a missing browser fails this test), waits for frames, types a motion
switch and then a new shot, sends bad input (empty, huge, binary, a flood, a watcher tab,
another origin), stops, and checks on the saved mp4 by ToyBench that the video followed the
typed captions. Pause and resume are clicked too. Then the saved replay.toml is run through `longlive run` and must give the same
video. The page's screenshot is written to test-artifacts/live_page.png; the measured prompt
latency and page frame rate are printed (docs/benchmarks.md records them).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from longlive.media import read_video

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
START = "a small red circle moves right steadily and bounces on a dark blue background"
SWITCH = "a small red circle moves left steadily and bounces on a dark blue background"  # a motion switch
CUT = "a small yellow square moves down steadily and bounces on a black background"  # new shot: all changes
FRAMES_PER_CHUNK = 4


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium (the README test command does)")
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start_live(run_dir: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "longlive", "live", str(ROOT / "experiments/live_toy.toml"), "--port", "0",
               "--run-dir", str(run_dir), "--set", "run.threads=1", "--set", "sampler.num_frames=96"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
                               cwd=ROOT)
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("live: open "):
            return process, line.split()[2]
    process.kill()
    pytest.fail("live did not print its address:\n" + "".join(lines))


def post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "api/control", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_live_page_end_to_end(tmp_path):
    from playwright.sync_api import sync_playwright

    from longlive.prompts import chunk_prompts, load_prompt_script, pixel_schedule
    from longlive_plugins.toyworld.toybench import score_video

    browser_path = chromium()
    run_dir = tmp_path / "live"
    process, url = start_live(run_dir)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("window.liveStats.role === 'driver'", timeout=30_000)
            page.wait_for_function("window.liveStats.framesReceived >= 8", timeout=120_000)
            stats = lambda: page.evaluate("window.liveStats")  # noqa: E731

            # a watcher tab: sees frames, cannot steer
            watcher = browser.new_page()
            watcher.goto(url)
            watcher.wait_for_function("window.liveStats.role === 'watcher' && window.liveStats.framesReceived > 0",
                                      timeout=60_000)
            assert watcher.is_disabled("#send")
            token = watcher.evaluate("fetch('/api/control', {method: 'POST', headers: {'Content-Type': "
                                     "'application/json'}, body: '{}'}).then(r => r.status)")
            assert token == 403

            # bad input from the driving page: clear messages, the stream goes on
            page.fill("#prompt", "   ")
            page.click("#send")
            page.wait_for_function("document.querySelector('#message').textContent.includes('empty')")
            assert page.get_attribute("#message", "class") == "error"
            page.fill("#prompt", "x" * 5000)
            page.click("#send")
            page.wait_for_function("document.querySelector('#message').textContent.includes('more than 1000')")
            binary = page.evaluate("""() => fetch('/api/control', {method: 'POST', headers: {'Content-Type':
                'application/json', 'X-Live-Token': window.liveStats.token}, body: new Uint8Array([0, 255, 1])})
                .then(async r => [r.status, await r.json()])""")
            assert binary[0] == 400 and "not JSON" in binary[1]["error"]

            # the switch: typed, Enter
            page.fill("#prompt", SWITCH)
            page.press("#prompt", "Enter")
            page.wait_for_function("Object.keys(window.liveStats.latencies).length >= 1", timeout=60_000)
            frames_at_switch = stats()["framesReceived"]
            page.wait_for_function(f"window.liveStats.framesReceived >= {frames_at_switch + 3 * FRAMES_PER_CHUNK}",
                                   timeout=60_000)

            # the cut: "New shot"
            page.fill("#prompt", CUT)
            page.click("#cut")
            page.wait_for_function("Object.keys(window.liveStats.latencies).length >= 2", timeout=60_000)
            frames_at_cut = stats()["framesReceived"]
            page.wait_for_function(f"window.liveStats.framesReceived >= {frames_at_cut + 3 * FRAMES_PER_CHUNK}",
                                   timeout=60_000)
            watcher.close()  # a closed tab stops nothing

            # pause holds the stream between chunks; resume goes on
            page.click("#pause")
            page.wait_for_function("window.liveStats.state === 'paused'")
            page.wait_for_function("window.liveStats.lastStatus.held && "  # the chunk being made finished
                                   "window.liveStats.framesReceived === window.liveStats.lastStatus.frames",
                                   timeout=60_000)
            held = stats()["framesReceived"]
            page.wait_for_timeout(1500)
            assert stats()["framesReceived"] == held
            page.click("#resume")
            page.wait_for_function(f"window.liveStats.framesReceived > {held}", timeout=60_000)

            # a flood of prompts: refused past the rate limit with a message, the generator goes on
            flood = page.evaluate("""async (prompt) => {
                const codes = [];
                for (let i = 0; i < 30; i++) {
                    const r = await fetch('/api/control', {method: 'POST', headers: {'Content-Type': 'application/json',
                        'X-Live-Token': window.liveStats.token}, body: JSON.stringify({action: 'prompt', prompt})});
                    codes.push(r.status);
                }
                return codes; }""", CUT)
            assert 429 in flood and 200 in flood

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(tmp_path / "live_page.png"))
            shutil.copy(tmp_path / "live_page.png", ARTIFACTS / "live_page.png")
            delivered = stats()
            assert 0 < delivered["deliveredFps"] <= 2 * 8, delivered["deliveredFps"]  # the page's own rate: sane
            page.click("#stop")
            page.wait_for_function("window.liveStats.state === 'finished'", timeout=120_000)
            final = stats()
            browser.close()

        # another origin is refused (the page's own requests carry its origin)
        status, answer = post(url, b'{"action": "stop"}', {"Content-Type": "application/json",
                                                          "Origin": "http://evil.example"})
        assert status in (403, 409) and not answer["ok"]
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    latencies = sorted(final["latencies"].values())
    seconds = (delivered["lastFrameAt"] - delivered["firstFrameAt"]) / 1000
    fps = (delivered["framesReceived"] - 1) / seconds
    print(f"\nlive page: prompt submit -> first frame under it: {', '.join(f'{s:.2f}' for s in latencies)} s; "
          f"{fps:.2f} frames/s delivered ({delivered['framesReceived']} frames in {seconds:.1f} s); "
          f"generation {final['lastStatus']['speed']}x real time")
    assert final["framesReceived"] == final["lastStatus"]["frames"], "the page missed frames"

    # the saved video follows the typed captions (ToyBench on the mp4)
    video, fps_file = read_video(run_dir / "video.mp4")
    script = load_prompt_script(run_dir / "prompts.toml")
    chunks = chunk_prompts(script, num_frames=script.total_frames, frames_per_chunk=FRAMES_PER_CHUNK)
    assert len(video) == script.total_frames == final["lastStatus"]["frames"]
    assert [c.prompt for c in chunks][0] == START and SWITCH in [c.prompt for c in chunks]
    cut_chunk = next(c for c in chunks if c.prompt == CUT)
    assert cut_chunk.shot_start and cut_chunk.shot_index == 1
    switch_chunk = next(c for c in chunks if c.prompt == SWITCH)
    assert switch_chunk.switch and not switch_chunk.shot_start
    schedule = pixel_schedule(chunks, frames_per_chunk=FRAMES_PER_CHUNK, temporal_stride=1)
    scores = score_video(np.asarray(video), fps=fps_file, schedule=schedule)
    by_caption = {s.caption: s for s in scores.spans}
    cut = by_caption[CUT]
    assert cut.color >= 0.9 and cut.shape >= 0.9 and cut.background >= 0.9, cut
    responses = {s.caption: s.frames_to_match for s in scores.switches}
    assert responses[CUT] is not None and responses[CUT] <= 2 * FRAMES_PER_CHUNK, responses
    print(f"ToyBench: switch {responses[SWITCH]} frames to match, motion {by_caption[SWITCH].motion:.2f}; "
          f"cut {responses[CUT]} frames, colour {cut.color:.2f} shape {cut.shape:.2f}")

    # the saved prompt script replays to the same video through `run`
    replay_dir = tmp_path / "replay"
    done = subprocess.run([sys.executable, "-m", "longlive", "run", str(run_dir / "replay.toml"), "--run-dir",
                           str(replay_dir)], capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    replayed, _ = read_video(replay_dir / "video.mp4")
    assert replayed.shape == video.shape and np.array_equal(replayed, video)
    assert tomllib.loads((run_dir / "replay.toml").read_text())["sampler"]["num_frames"] == len(video)
