"""The generator of `longlive live`: a generate run on its own thread, watched and steered between chunks.

`LiveSession` runs the experiment's generation (`run_task` with the same protocol as `run`:
run record, run-end hooks, result.json) on a thread it starts. The chunk loop is the ordinary
one (`assembly.render`); the session only

- hands `render` its schedule lazily (`_paced`): between two chunks it waits while paused, keeps
  the stream at most `max_lead_s` seconds of video ahead of the playback clock (a generator
  faster than real time would otherwise run away from what is watched, and a typed prompt
  would show seconds late), and ends the schedule at stop;
- registers `PagePrompts` (longlive/live_prompts.py), the live prompt source the page feeds,
  on the run's plugin manager: typed prompts reach the loop through `longlive_next_prompt`;
- sends each decoded piece to the mp4 sink (`GenerateOutputs`, as `run` does) and, as uint8
  frames with their chunk, shot and page request, to a `LiveListener` (the web server).

At the end (stop, or the schedule runs out) the mp4 is closed and renamed (`video.mp4`, atomic)
and two files are written atomically beside it: `prompts.toml`, the prompt script of what was
generated (page prompts, switches and cuts included), and `replay.toml`, the resolved experiment
pointing at it with `sampler.num_frames` cut to the chunks made: `python -m longlive run
RUN_DIR/replay.toml` generates the same video (same seed).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

import attrs

from longlive.errors import ConfigError
from longlive.live_prompts import ChunkRecord, PagePrompts, PromptRequest

if TYPE_CHECKING:
    import numpy as np
    import torch

    from longlive.prompts import ChunkPrompt
    from longlive.run import RunContext

log = logging.getLogger(__name__)

STATES = ("starting", "waiting", "running", "paused", "stopping", "finished", "failed")  # "waiting": for a viewer


@attrs.frozen
class FrameInfo:
    """What the page is told about one frame: its index, chunk, shot and the page request in force."""

    frame: int
    chunk: int
    shot: int
    request: int | None


class LiveListener(Protocol):
    """Where the session reports; called from the generator thread, so each call must hand off and return."""

    def frames(self, frames: np.ndarray, infos: list[FrameInfo]) -> None:
        """Decoded frames, uint8 [t, H, W, 3], in order, with one FrameInfo each."""

    def status(self, status: dict) -> None:
        """The session's state (`LiveSession.status()`), after every change."""


def check_live_experiment(run: RunContext) -> None:
    """`live` streams one generated video; refuse other experiments before any weights load."""
    exp = run.experiment
    if exp.run.task != "generate" or exp.generate is None:
        raise ConfigError(f"run.task: live streams a generate experiment, got {exp.run.task!r}; "
                          "use an experiment with task = \"generate\"")
    if exp.generate.batch != 1:
        raise ConfigError(f"generate.batch: {exp.generate.batch}: live shows one video; set --set generate.batch=1")
    if exp.generate.image is not None:
        log.info("live: I2V from %s", exp.generate.image)


class LiveSession:
    """A generate run on its own thread: start(), submit prompts, pause(), resume(), stop(), join()."""

    def __init__(self, run: RunContext, listener: LiveListener, *, max_lead_s: float = 1.0) -> None:
        check_live_experiment(run)
        self.run, self.listener, self.max_lead_s = run, listener, max_lead_s
        self.prompts = PagePrompts(on_chunk=self._chunk_done)
        run.pm.register(self.prompts, name="live_page")
        g, s = run.experiment.generate, run.experiment.sampler
        self.fps, self.frames_per_chunk = g.fps, s.frames_per_chunk
        self.total_chunks = run.geometry.chunks(s.num_frames)
        self.temporal_stride = run.geometry.temporal_stride
        self._cond = threading.Condition()
        self._state = "starting"
        self._stop_requested = False
        self._watched = False  # the first chunk waits for a viewer (begin()): nobody misses the start
        self._held = False  # the generator waits between chunks for a viewer or a resume
        self._paused_since: float | None = None
        self._paused_total = 0.0
        self._first_frame_at: float | None = None
        self._busy = 0.0  # seconds spent making chunks (not waiting: pause, pacing)
        self._frames = 0
        self._records: dict[int, ChunkRecord] = {}
        self._last: ChunkRecord | None = None
        self.message = ""
        self.saved: list[str] = []
        self.result: dict = {}
        self._thread = threading.Thread(target=self._main, name="longlive-live-generator")

    # ---- control (any thread) ----

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the generator thread; True once it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def ended(self) -> bool:
        return self._state in ("finished", "failed")

    def submit(self, prompt: object, *, cut: bool = False) -> tuple[PromptRequest, PromptRequest | None]:
        """A prompt for the next chunk (PromptRejected when it cannot be one)."""
        request, replaced = self.prompts.submit(prompt, cut=cut)
        self._publish()
        return request, replaced

    def begin(self) -> None:
        """A viewer is there: the stream may start (idempotent)."""
        with self._cond:
            self._watched = True
            if self._state == "waiting":
                self._state = "running"
            self._cond.notify_all()
        self._publish()

    def pause(self) -> bool:
        with self._cond:
            if self._state != "running":
                return False
            self._state, self._paused_since = "paused", time.monotonic()
            self._cond.notify_all()
        self._publish()
        return True

    def resume(self) -> bool:
        with self._cond:
            if self._state != "paused":
                return False
            self._resume_clock()
            self._state = "running"
            self._cond.notify_all()
        self._publish()
        return True

    def stop(self) -> bool:
        """End the stream after the chunk being made; the video and prompts are then saved."""
        with self._cond:
            if self.ended or self._stop_requested:
                return False
            self._stop_requested = True
            if self._state == "paused":
                self._resume_clock()
            self._state = "stopping"
            self._cond.notify_all()
        self._publish()
        return True

    def status(self) -> dict:
        with self._cond:
            last, pending = self._last, self.prompts.pending
            video_s = self._frames / self.fps
            return {
                "type": "status", "state": self._state, "fps": self.fps, "frames": self._frames,
                "chunk": last.chunk.index if last else None, "chunks": self.total_chunks,
                "shot": last.chunk.shot_index if last else None, "prompt": last.chunk.prompt if last else None,
                "request": last.request.id if last and last.request else None,
                "pending": pending.id if pending else None, "held": self._held,
                "video_seconds": round(video_s, 3), "busy_seconds": round(self._busy, 3),
                "speed": round(video_s / self._busy, 3) if self._busy > 0 else None,
                "message": self.message, "run_dir": str(self.run.run_dir), "saved": list(self.saved),
            }

    # ---- the generator thread ----

    def _main(self) -> None:
        from longlive.run import run_task

        try:
            self.result = run_task(self.run, task=self._generate)
            self.message = self.result.get("summary", "").splitlines()[0] if self.result.get("summary") else ""
            state = "finished"
        except BaseException as e:  # reported on the page and the console; the server decides when to exit
            log.error("live: generation failed: %s: %s", type(e).__name__, e, exc_info=True)
            first = (str(e).strip().splitlines() or [""])[0][:300]
            self.message = f"{type(e).__name__}: {first}" + (" (the video and prompts were saved first)"
                                                             if self.saved else "")
            state = "failed"
        with self._cond:
            self._state = state
            self._cond.notify_all()
        self._publish()

    def _generate(self, run: RunContext) -> dict:
        from longlive.assembly import build_parts, render
        from longlive.generate import GenerateOutputs
        from longlive.prompts import chunk_prompts, load_prompt_script, single_prompt

        exp = run.experiment
        s, g = exp.sampler, exp.generate
        script = load_prompt_script(g.prompt_script) if g.prompt_script else single_prompt(g.prompt, s.num_frames)
        schedule = chunk_prompts(script, num_frames=s.num_frames, frames_per_chunk=s.frames_per_chunk,
                                 where="generate.prompt_script" if g.prompt_script else "generate.prompt")
        parts = build_parts(run)
        outputs = GenerateOutputs(run)

        def add_frames(frames: torch.Tensor) -> None:
            outputs.add_frames(frames)
            self._deliver(frames[0])

        with self._cond:
            if self._state == "starting":
                self._state = "running" if self._watched else "waiting"
        self._publish()
        try:
            rendered = render(run, parts, self._paced(schedule), on_frames=add_frames,
                              on_latents=outputs.add_latents, show_progress=False)
            if rendered.frames == 0:
                outputs.abort()
                return {"frames": 0, "summary": "stopped before the first chunk: nothing was generated or saved"}
            files = outputs.finish()
        except BaseException:
            outputs.abort()
            raise
        files += self._save_replay(rendered.chunks)
        self.saved = files
        seconds = rendered.frames / g.fps
        return {"frames": rendered.frames, "latent_frames": len(rendered.chunks) * s.frames_per_chunk,
                "seconds": self._busy, "video_seconds": seconds, "files": files, "schedule": rendered.chunks,
                "summary": f"live: {rendered.frames} frames ({seconds:.1f} s of video) in {self._busy:.1f} s of "
                           f"generation; saved {', '.join(Path(f).name for f in files)} in {run.run_dir}"}

    def _paced(self, schedule: list[ChunkPrompt]) -> Iterator[ChunkPrompt]:
        """The schedule, one chunk at a time, while not stopped: waits while paused or too far ahead."""
        for chunk in schedule:
            with self._cond:
                while not self._stop_requested:
                    ahead = self._lead()
                    if self._state == "paused" or not self._watched:
                        self._held = True
                        self._cond.release()  # tell the page the generator holds (the listener may take time)
                        try:
                            self._publish()
                        finally:
                            self._cond.acquire()
                        if self._state == "paused" or not self._watched:
                            self._cond.wait()
                    elif ahead > self.max_lead_s:
                        self._cond.wait(timeout=ahead - self.max_lead_s)
                    else:
                        break
                self._held = False
                if self._stop_requested:
                    return
            started = time.monotonic()
            yield chunk  # render makes the chunk and delivers what the decoder has ready before asking again
            self._busy += time.monotonic() - started

    def _lead(self) -> float:
        """Seconds of video made ahead of the playback clock (which starts at the first frame, stops while paused)."""
        if self._first_frame_at is None:
            return 0.0
        paused = self._paused_total + (time.monotonic() - self._paused_since if self._paused_since else 0.0)
        return self._frames / self.fps - (time.monotonic() - self._first_frame_at - paused)

    def _resume_clock(self) -> None:
        if self._paused_since is not None:
            self._paused_total += time.monotonic() - self._paused_since
            self._paused_since = None

    def _chunk_done(self, record: ChunkRecord) -> None:
        with self._cond:
            self._records[record.chunk.index] = record
            self._last = record
        self._publish()

    def _deliver(self, video: torch.Tensor) -> None:
        """One decoded piece [3, t, H, W] to the listener, each frame labelled with its chunk."""
        from longlive.media import to_uint8_frames

        frames = to_uint8_frames(video)
        infos = []
        for offset in range(frames.shape[0]):
            index = self._frames + offset
            latent = 0 if index == 0 else 1 + (index - 1) // self.temporal_stride  # a causal codec's frame 0
            record = self._records.get(latent // self.frames_per_chunk)
            infos.append(FrameInfo(frame=index, chunk=latent // self.frames_per_chunk,
                                   shot=record.chunk.shot_index if record else 0,
                                   request=record.request.id if record and record.request else None))
        with self._cond:
            if self._first_frame_at is None:
                self._first_frame_at = time.monotonic()
            self._frames += frames.shape[0]
            for chunk in [c for c in self._records if c < infos[0].chunk]:  # their frames are all out
                del self._records[chunk]
        self.listener.frames(frames, infos)

    def _save_replay(self, chunks: list[ChunkPrompt]) -> list[str]:
        """prompts.toml (what was generated) and replay.toml (the experiment that generates it again)."""
        from longlive.config import PATH_KEYS, dumps_toml, experiment_to_table
        from longlive.prompts import dump_prompt_script

        run = self.run
        if run.run_dir is None:
            return []
        script = run.run_dir / "prompts.toml"
        _write_atomic(script, dump_prompt_script(chunks, frames_per_chunk=self.frames_per_chunk))
        table = experiment_to_table(run.experiment, run.plugin_configs, run.task_config)
        for section, key in PATH_KEYS:  # resolved against the working directory of this session: made absolute
            if isinstance(table.get(section, {}).get(key), str):
                table[section][key] = str(Path(table[section][key]).resolve())
        table["generate"].pop("prompt", None)
        table["generate"]["prompt_script"] = script.name  # relative to replay.toml's folder: the run dir moves whole
        table["sampler"]["num_frames"] = len(chunks) * self.frames_per_chunk
        replay = run.run_dir / "replay.toml"
        header = (f"# Generates the video of this live session again: python -m longlive run {replay}\n"
                  f"# ({len(chunks)} chunks; the prompts typed on the page are in {script.name})\n")
        _write_atomic(replay, header + dumps_toml(table))
        return [str(script), str(replay)]

    def _publish(self) -> None:
        self.listener.status(self.status())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
