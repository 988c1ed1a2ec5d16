"""vae_async on the CPU: thread mode equals the synchronous decoder bit for bit (toy codec and the
tiny Wan VAE, through back-pressure), a worker's error stops the run (exit 1, a clear message,
a playable partial video), and stream / device modes are refused on a machine without the GPUs."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import torch

from longlive.cli import main
from longlive.config import experiment_from_table
from longlive.decode import SyncDecoder
from longlive.media import read_video
from longlive.run import make_run
from longlive_plugins.vae_async.decoder import AsyncDecoder, ThreadLane

EXPERIMENT = Path(__file__).parents[3] / "experiments" / "debug_generate.toml"
PLUGIN = ["--set", 'run.plugins=["vae_async"]']


def _codec(name: str, plugins: list[str]):
    table = {"run": {"name": "t", "task": "generate", "device": "cpu", "plugins": plugins},
             "model": {"preset": "debug", "codec": name, "text_encoder": "random"},
             "sampler": {"height": 64, "width": 64, "num_frames": 4, "frames_per_chunk": 2, "window_frames": 4},
             "generate": {"prompt": "a small red circle moves left steadily on a black background"}}
    run = make_run(experiment_from_table(table), create_dir=False)
    return run.codec_spec.build(run)


def _decode_all(decoder, latents: torch.Tensor, chunk_frames: int) -> list[torch.Tensor]:
    pieces = []
    try:
        for i, chunk in enumerate(latents.split(chunk_frames, dim=2)):
            decoder.push(i, chunk)
            pieces += decoder.ready()
        return pieces + decoder.flush()
    finally:
        decoder.close()


@pytest.mark.parametrize("codec_name, plugins", [("toy-patch", ["toyworld"]), ("wan2.2-vae-debug", [])])
@pytest.mark.parametrize("queue_depth", [1, 3])
def test_thread_mode_is_bit_exact(codec_name, plugins, queue_depth):
    codec = _codec(codec_name, plugins)
    latents = torch.randn(2, 48, 12, 4, 4, generator=torch.Generator().manual_seed(3))
    sync = _decode_all(SyncDecoder(codec), latents, 2)
    threaded = _decode_all(AsyncDecoder(ThreadLane(codec), queue_depth=queue_depth), latents, 2)
    assert len(threaded) == len(sync) == 6
    for a, b in zip(threaded, sync):
        assert torch.equal(a, b) and torch.isfinite(a).all()


class _SlowCodec:
    """Decodes after a gate opens, counting the chunks it has started."""

    def __init__(self) -> None:
        self.gate, self.started = threading.Event(), 0

    def decode_stream(self):
        return None

    def decode_chunk(self, state, latents):
        self.started += 1
        self.gate.wait(10)
        return latents.clone()


def test_a_full_queue_blocks_push():
    codec = _SlowCodec()
    decoder = AsyncDecoder(ThreadLane(codec), queue_depth=1)
    pushed = []

    def producer():
        for i in range(4):
            decoder.push(i, torch.full((1, 1, 1, 1, 1), float(i)))
            pushed.append(i)

    worker = threading.Thread(target=producer)
    worker.start()
    worker.join(0.5)
    assert pushed == [0, 1] and codec.started == 1  # one decoding, one waiting; the third push blocks
    codec.gate.set()
    worker.join(10)
    assert [p.item() for p in decoder.flush()] == [0.0, 1.0, 2.0, 3.0]
    decoder.close()


def test_worker_error_is_raised_at_the_next_call_and_close_still_works():
    class Failing(_SlowCodec):
        def decode_chunk(self, state, latents):
            raise ValueError("boom")

    decoder = AsyncDecoder(ThreadLane(Failing()), queue_depth=1)
    decoder.push(0, torch.zeros(1, 1, 1, 1, 1))
    with pytest.raises(RuntimeError, match=r"vae_async \(thread mode\): decoding chunk 0 failed: ValueError: boom") as e:
        decoder.flush()
    assert isinstance(e.value.__cause__, ValueError) and e.value.__cause__.__traceback__ is not None
    for _ in range(3):  # the worker discards what is queued after a failure: pushes never hang
        with pytest.raises(RuntimeError):
            decoder.push(1, torch.zeros(1, 1, 1, 1, 1))
    decoder.close()
    decoder.close()


def test_generation_with_vae_async_equals_the_core(tmp_path):
    from longlive.assembly import build_parts, render
    from longlive.prompts import chunk_prompts, single_prompt

    videos = []
    for plugins in ([], ["vae_async"]):
        table = {"run": {"name": "t", "task": "generate", "device": "cpu", "plugins": plugins},
                 "model": {"preset": "debug", "codec": "wan2.2-vae-debug", "text_encoder": "random"},
                 "sampler": {"height": 64, "width": 64, "num_frames": 8, "frames_per_chunk": 2, "window_frames": 4,
                             "steps": 2},
                 "generate": {"prompt": "x"}}
        if plugins:
            table["plugins"] = {"vae_async": {"queue_depth": 1}}
        run = make_run(experiment_from_table(table), create_dir=False)
        schedule = chunk_prompts(single_prompt("x", 8), num_frames=8, frames_per_chunk=2)
        videos.append(render(run, build_parts(run), schedule, show_progress=False, keep_video=True).video)
    assert videos[0].shape == (1, 3, 29, 64, 64) and torch.equal(videos[0], videos[1])


def test_a_decoder_error_stops_the_run_and_keeps_a_playable_partial_video(tmp_path, monkeypatch, capsys):
    from longlive.model.vae import WanVAE

    original, calls = WanVAE.decode_chunk, []

    def fail_on_chunk_6(self, state, latents):
        calls.append(1)
        if len(calls) == 7:
            raise ValueError("injected decoder failure")
        return original(self, state, latents)

    monkeypatch.setattr(WanVAE, "decode_chunk", fail_on_chunk_6)
    code = main(["run", str(EXPERIMENT), *PLUGIN, "--set", "plugins.vae_async.queue_depth=1",
                 *_frames(tmp_path, 16), "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "vae_async (thread mode): decoding chunk 6 failed: ValueError: injected decoder failure" in err
    assert not (tmp_path / "video.mp4").exists()
    kept = re.search(r"the partial video \((\d+) frames\) is kept at (\S+)", (tmp_path / "log.txt").read_text())
    assert kept and Path(kept.group(2)) == tmp_path / "video.partial.mp4"
    frames, fps = read_video(tmp_path / "video.partial.mp4")
    # queue depth 1: by chunk 6, chunks 0-3 at least were decoded and written (5 + 3 * 8 pixel frames)
    assert frames.shape[0] == int(kept.group(1)) >= 29 and fps == pytest.approx(8.0)


def _frames(tmp_path, frames: int) -> list[str]:
    """--set arguments for a one-shot video of `frames` latent frames."""
    script = tmp_path / "script.toml"
    script.write_text(f'[[shot]]\nprompt = "a red circle moves left"\nframes = {frames}\n')
    return ["--set", f"sampler.num_frames={frames}", "--set", f'generate.prompt_script="{script}"']


@pytest.mark.parametrize("mode", ["stream", "device"])
def test_gpu_modes_are_refused_without_the_gpus(tmp_path, capsys, mode):
    code = main(["run", str(EXPERIMENT), *PLUGIN, "--set", f'plugins.vae_async.mode="{mode}"',
                 "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "plugins.vae_async.mode" in err and repr(mode) in err and "thread" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1 and "Traceback" not in err


def test_decode_device_needs_device_mode():
    with pytest.raises(Exception, match="decode_device"):
        make_run(experiment_from_table({
            "run": {"name": "t", "task": "generate", "device": "cpu", "plugins": ["vae_async"]},
            "generate": {"prompt": "x"}, "plugins": {"vae_async": {"decode_device": "cuda:1"}}}), create_dir=False)
