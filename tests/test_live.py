"""The pieces of `longlive live` without a browser: the page's prompt source, cuts in the chunk loop,
the saved prompt script, the session on the debug model, and the server's refusals."""
from __future__ import annotations

import asyncio
import json
import random
import sys

import pytest
import torch

from longlive.live_prompts import MAX_PROMPT_CHARS, PagePrompts, PromptRejected, clean_prompt
from longlive.prompts import ChunkPrompt, NewShot, PromptScript, chunk_prompts, dump_prompt_script
from longlive.structure import structure


def chunk(index: int, prompt: str = "a", shot: int = 0, start: bool = False) -> ChunkPrompt:
    return ChunkPrompt(index, prompt, shot, shot_start=start, switch=False)


@pytest.mark.parametrize("text, words", [("", "empty"), ("   \n\t ", "empty"), ("x" * (MAX_PROMPT_CHARS + 1), "more than"),
                                         ("a\x00b", "control"), ("\x7f", "control"), (b"bytes", "must be text"),
                                         (None, "must be text"), (42, "must be text")])
def test_bad_prompts_are_refused_with_a_message(text, words):
    with pytest.raises(PromptRejected, match=words):
        clean_prompt(text)


def test_prompt_whitespace_is_collapsed():
    assert clean_prompt("  a red\n circle\t ") == "a red circle"
    assert clean_prompt("ü" * MAX_PROMPT_CHARS) == "ü" * MAX_PROMPT_CHARS


def test_page_prompts_newest_wins_and_a_cut_is_a_new_shot():
    source = PagePrompts()
    assert source.longlive_next_prompt(chunk(0, start=True)) is None  # nothing typed: the schedule
    source.submit("b")
    _, replaced = source.submit("c")
    assert replaced.prompt == "b"  # a flood between two chunks: only the newest is used
    assert source.longlive_next_prompt(chunk(1)) == "c"
    assert source.longlive_next_prompt(chunk(2)) == "c"  # stays in force
    source.submit("d", cut=True)
    assert source.longlive_next_prompt(chunk(3)) == NewShot("d")
    assert source.longlive_next_prompt(chunk(4)) == "d"
    assert source.longlive_next_prompt(chunk(5, "e", shot=1, start=True)) is None  # a scripted shot is newer
    assert source.longlive_next_prompt(chunk(0, start=True)) is None  # a new video


def test_chunk_loop_takes_a_cut_from_a_live_source(pm, run):
    """A NewShot answer starts a shot: shot_start hook with the next index; later scripted shots count it."""
    from longlive.assembly import build_parts, render
    from longlive.registry import hookimpl

    answers = {1: NewShot("cut"), 2: "switched"}
    events = []

    class Source:
        @hookimpl(tryfirst=True)
        def longlive_next_prompt(self, chunk):
            return answers.get(chunk.index)

        @hookimpl
        def longlive_shot_start(self, shot_index, chunk_index):
            events.append(("shot", shot_index, chunk_index))

        @hookimpl
        def longlive_prompt_switch(self, chunk_index, prompt):
            events.append(("switch", chunk_index, prompt))

    run.pm.register(Source(), name="test-source")
    schedule = [chunk(0, "a", 0, True), chunk(1, "a", 0), chunk(2, "a", 0), chunk(3, "b", 1, True)]
    rendered = render(run, build_parts(run), schedule, show_progress=False)
    assert events == [("shot", 0, 0), ("shot", 1, 1), ("switch", 2, "switched"), ("shot", 2, 3)]
    assert [(c.prompt, c.shot_index, c.shot_start, c.switch) for c in rendered.chunks] == [
        ("a", 0, True, False), ("cut", 1, True, False), ("switched", 1, False, True), ("b", 2, True, False)]


def test_dumped_prompt_script_gives_back_the_chunks():
    """Random generated schedules (cuts, switches, repeated prompts) survive dump -> load -> chunk_prompts."""
    import tomllib

    rng = random.Random(0)
    for _ in range(50):
        chunks, shot = [], -1
        for index in range(rng.randint(1, 12)):
            start = index == 0 or rng.random() < 0.3
            shot += start
            prompt = rng.choice(["a red circle", 'a "quoted" \\ prompt', "ünïcode", "a tab\u007f"]) \
                if start or rng.random() < 0.4 else chunks[-1].prompt
            switch = not start and prompt != chunks[-1].prompt
            chunks.append(ChunkPrompt(index, prompt, shot, shot_start=start, switch=switch))
        text = dump_prompt_script(chunks, frames_per_chunk=4)
        script = structure(tomllib.loads(text), PromptScript, where="dumped")
        assert chunk_prompts(script, num_frames=4 * len(chunks), frames_per_chunk=4) == chunks


class Listener:
    """Records what a session reports (the server's side of LiveListener)."""

    def __init__(self):
        self.statuses, self.infos, self.count = [], [], 0

    def frames(self, frames, infos):
        self.count += frames.shape[0]
        self.infos += infos

    def status(self, status):
        self.statuses.append(status)


def test_session_waits_for_a_viewer_takes_prompts_and_saves(run):
    """The debug model: nothing is generated before a viewer is there; a prompt typed before the start
    is used from chunk 0; pause holds between chunks, resume goes on; stop ends the stream; prompts.toml
    and replay.toml describe what was made."""
    import tomllib

    from longlive.live_session import LiveSession

    listener = Listener()
    session = LiveSession(run, listener, max_lead_s=1e9)
    session.start()
    try:
        while not (listener.statuses and listener.statuses[-1]["state"] == "waiting"):
            assert not session.join(0.05), session.message
        assert listener.count == 0  # nobody watches yet: nothing is generated
        session.submit("typed", cut=False)
        session.begin()
        while listener.statuses[-1]["chunk"] is None:
            assert not session.join(0.02), session.message
        assert session.pause()
        while not session.status()["held"]:  # the chunk being made finishes and its frames are delivered
            assert not session.join(0.02), session.message
        paused = session.status()
        assert paused["state"] == "paused" and paused["chunk"] <= 1 and paused["frames"] > 0
        session.join(1.0)
        assert session.status()["chunk"] == paused["chunk"] and session.status()["frames"] == paused["frames"]
        assert session.resume() and not session.resume()
        while not session.join(0.05):
            if listener.statuses[-1]["chunk"] >= paused["chunk"] + 1:
                session.stop()
    finally:
        session.stop()
        session.join()
    status = session.status()
    assert status["state"] == "finished", status["message"]
    script = tomllib.loads((run.run_dir / "prompts.toml").read_text())
    used = [shot["prompt"] for shot in script["shot"]]
    assert used == ["typed"]  # typed before chunk 0 began: chunk 0 already uses it
    assert listener.count == status["frames"] > 0 and [i.frame for i in listener.infos] == list(range(status["frames"]))
    assert all(i.request == 1 for i in listener.infos)
    replay = tomllib.loads((run.run_dir / "replay.toml").read_text())
    assert replay["generate"]["prompt_script"] == "prompts.toml"
    assert replay["sampler"]["num_frames"] == script["shot"][0]["frames"]
    assert (run.run_dir / "video.mp4").is_file() and not list(run.run_dir.glob("*.partial.mp4"))


class FakeSession:
    """What the server calls on a session."""

    def __init__(self):
        self.prompts, self.calls, self.ended = PagePrompts(), [], False

    def submit(self, prompt, *, cut=False):
        return self.prompts.submit(prompt, cut=cut)

    def begin(self):
        self.calls.append("begin")

    def pause(self):
        self.calls.append("pause")
        return True

    def status(self):
        return {"type": "status", "state": "running"}


def test_server_refuses_bad_requests_and_foreign_origins():
    from aiohttp.test_utils import TestClient, TestServer

    from longlive.live_server import RATE_BURST, LiveServer

    async def scenario():
        server = LiveServer(host="127.0.0.1", port=0)
        server.session = FakeSession()
        app = server.make_app()
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            server.port = client.port
            host = f"127.0.0.1:{client.port}"
            page = await client.get("/")
            assert page.status == 200 and "liveStats" in await page.text()
            assert (await client.get("/", headers={"Host": f"evil.example:{client.port}"})).status == 403
            assert (await client.get("/ws", headers={"Origin": "http://evil.example"})).status == 403
            driver = await client.ws_connect("/ws", headers={"Origin": f"http://{host}"})
            hello = json.loads((await driver.receive()).data)
            watcher = await client.ws_connect("/ws")
            watcher_hello = json.loads((await watcher.receive()).data)
            assert (hello["role"], watcher_hello["role"]) == ("driver", "watcher")
            ok = {"Content-Type": "application/json", "X-Live-Token": hello["token"]}

            async def control(body, headers=ok):
                response = await client.post("/api/control", data=body, headers=headers)
                return response.status, await response.json()

            assert await control(b'{"action": "prompt", "prompt": "a red circle"}') == \
                (200, {"ok": True, "message": "prompt #1 queued: it takes effect at the next chunk", "request": 1})
            cases = [
                (b'{"action": "prompt", "prompt": ""}', ok, 400, "empty"),
                (b'\x00\xff binary', ok, 400, "not JSON"),
                (b'[1, 2]', ok, 400, "JSON object"),
                (b'{"action": "dance"}', ok, 400, "unknown action"),
                (b"x" * 20_000, ok, 413, "more than 16384"),
                (b'{"action": "pause"}', {**ok, "Content-Type": "text/plain"}, 415, "JSON"),
                (b'{"action": "pause"}', {**ok, "Origin": "http://evil.example"}, 403, "cross-origin"),
                (b'{"action": "pause"}', {**ok, "X-Live-Token": watcher_hello["token"]}, 403, "watching"),
                (b'{"action": "pause"}', {**ok, "X-Live-Token": "guess"}, 403, "reload"),
            ]
            for body, headers, status, words in cases:
                got, answer = await control(body, headers)
                assert got == status and not answer["ok"] and words in answer["error"], (body, answer)
            codes = [(await control(b'{"action": "pause"}'))[0] for _ in range(RATE_BURST + 5)]
            assert 429 in codes
            await driver.close()  # the driving tab closes: the watcher drives
            promoted = json.loads((await watcher.receive()).data)
            while promoted["type"] != "role":
                promoted = json.loads((await watcher.receive()).data)
            assert promoted["role"] == "driver"
            await watcher.close()
        return server.session.calls

    calls = asyncio.run(scenario())
    assert calls.count("begin") == 2 and "pause" in calls


@pytest.mark.parametrize("hidden", ["aiohttp", "PIL"])
def test_live_without_its_extra_names_it(hidden, monkeypatch, capsys, tmp_path):
    from pathlib import Path

    from longlive.cli import EXIT_BAD_INPUT, main

    monkeypatch.setitem(sys.modules, hidden, None)
    monkeypatch.delitem(sys.modules, "longlive.live_server", raising=False)
    monkeypatch.chdir(tmp_path)
    experiment = Path(__file__).parents[1] / "experiments" / "live_toy.toml"
    assert main(["live", str(experiment)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == (f"error: live needs the `live` extra ({hidden} is missing): "
                                               f"pip install 'longlive[live]'")
    assert not (tmp_path / "runs").exists()


def test_live_refuses_other_tasks_and_bad_ports(capsys, tmp_path, monkeypatch):
    from pathlib import Path

    from longlive.cli import EXIT_BAD_INPUT, main

    monkeypatch.chdir(tmp_path)
    experiment = Path(__file__).parents[1] / "experiments" / "live_toy.toml"
    assert main(["live", str(experiment), "--set", "run.task=bench", "--set", "bench.vae_chunks=1"]) == EXIT_BAD_INPUT
    assert "run.task: live streams a generate experiment, got 'bench'" in capsys.readouterr().err
    assert main(["live", str(experiment), "--port", "70000"]) == EXIT_BAD_INPUT
    assert "--port: 70000 is not a port" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_live_on_a_taken_port_is_one_line(capsys, tmp_path, monkeypatch):
    import socket
    from pathlib import Path

    from longlive.cli import EXIT_BAD_INPUT, main

    monkeypatch.chdir(tmp_path)
    experiment = Path(__file__).parents[1] / "experiments" / "live_toy.toml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["live", str(experiment), "--port", str(port), "--run-dir", str(tmp_path / "run")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"--host/--port: cannot serve on 127.0.0.1:{port}" in err and "--port" in err
    assert not (tmp_path / "run" / "video.mp4").exists()


def test_a_lagging_viewer_skips_its_oldest_frames_and_keeps_the_newest_status():
    from longlive.live_server import OUTBOX_FRAMES, Viewer

    viewer = Viewer(id=1, socket=None, token="t")
    viewer.send("note", "hello")
    for i in range(OUTBOX_FRAMES + 10):
        viewer.send("frame", bytes([i]))
        viewer.send("status", f"status {i}")
    sent = [viewer.take() for _ in range(len(viewer.outbox))]
    assert sent[0] == "hello" and sent[-1] == f"status {OUTBOX_FRAMES + 9}"
    assert [m for m in sent if isinstance(m, str) and m.startswith("status")] == [sent[-1]]
    assert [m for m in sent if isinstance(m, bytes)] == [bytes([i]) for i in range(10, OUTBOX_FRAMES + 10)]
    assert viewer.dropped == 10 and viewer.frames_waiting == 0


def test_only_loopback_binds_are_quiet(capsys, tmp_path, monkeypatch, caplog):
    """Another address is served only when asked, with a warning (192.0.2.1 is a documentation address:
    not this machine's, so the bind fails locally, one line, and nothing is sent anywhere)."""
    import logging
    from pathlib import Path

    from longlive.cli import EXIT_BAD_INPUT, main
    from longlive.live_server import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.0.2.1", "::", "example.org"]))
    monkeypatch.chdir(tmp_path)
    experiment = Path(__file__).parents[1] / "experiments" / "live_toy.toml"
    with caplog.at_level(logging.WARNING, logger="longlive"):
        code = main(["live", str(experiment), "--host", "192.0.2.1", "--port", "0", "--run-dir", str(tmp_path / "r")])
    assert code == EXIT_BAD_INPUT and "cannot serve on 192.0.2.1:0" in capsys.readouterr().err
    assert any("serving on 192.0.2.1, not this machine only" in r.getMessage() for r in caplog.records)
