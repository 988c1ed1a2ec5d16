"""Streaming outputs of the generate task: the mp4 sink (partial -> final names), latent parts,
the preview sampled from the stream, and what a failed or killed run leaves behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from longlive.cli import main
from longlive.latent_sink import LatentSink, read_latents
from longlive.media import read_video, to_uint8_frames
from longlive.monitor import PreviewFrames
from longlive.video_sink import VideoSink

ROOT = Path(__file__).parents[1]
EXPERIMENT = ROOT / "experiments" / "debug_generate.toml"


def _video(frames: int, batch: int = 2) -> torch.Tensor:
    """Smooth random frames [B, 3, T, 32, 48] in [-1, 1] (H.264 keeps smooth content close)."""
    coarse = torch.rand(batch, 3, frames, 4, 6, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(frames, 32, 48), mode="trilinear")


def test_sink_writes_partial_files_and_renames_them_on_success(tmp_path):
    video = _video(21)
    sink = VideoSink([tmp_path / "video_0.mp4", tmp_path / "video_1.mp4"], fps=8.0)
    for piece in video.split([5, 8, 8], dim=2):
        sink.write(piece)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["video_0.partial.mp4", "video_1.partial.mp4"]
    assert sink.finish() == [tmp_path / "video_0.mp4", tmp_path / "video_1.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video_0.mp4", "video_1.mp4"]
    for i in range(2):
        frames, fps = read_video(tmp_path / f"video_{i}.mp4")
        assert frames.shape == (21, 32, 48, 3) and fps == pytest.approx(8.0)
        # H.264 at crf 18: close to what went in
        assert np.abs(frames.astype(int) - to_uint8_frames(video[i]).astype(int)).mean() < 8  # wrong frames: ~60


def test_abort_keeps_a_playable_partial_file_and_no_final_name(tmp_path):
    sink = VideoSink([tmp_path / "video.mp4"], fps=8.0)
    sink.write(_video(13, batch=1))
    assert sink.abort() == [tmp_path / "video.partial.mp4"]
    assert not (tmp_path / "video.mp4").exists()
    assert read_video(tmp_path / "video.partial.mp4")[0].shape[0] == 13


def test_latent_parts_round_trip_and_a_missing_part_is_an_error(tmp_path):
    chunks = [torch.randn(2, 4, 2, 3, 3) for _ in range(5)]
    sink = LatentSink(tmp_path / "latents", chunks_per_file=2)
    for c in chunks:
        sink.write(c)
    sink.flush()
    assert [p.name for p in sorted((tmp_path / "latents").iterdir())] == [
        "frames_00000000.safetensors", "frames_00000004.safetensors", "frames_00000008.safetensors"]
    assert torch.equal(read_latents(tmp_path / "latents"), torch.cat(chunks, dim=2))
    (tmp_path / "latents" / "frames_00000004.safetensors").unlink()
    with pytest.raises(ValueError, match="frames_00000008.safetensors starts at latent frame 8, expected 4"):
        read_latents(tmp_path / "latents")


@pytest.mark.parametrize("total", [1, 5, 29, 200])
def test_preview_frames_from_a_stream_equal_the_whole_video_preview(total):
    video = _video(total, batch=1)[0]
    preview = PreviewFrames(total)
    for piece in video.split(7, dim=1):
        preview.add(piece)
    index = torch.linspace(0, total - 1, min(8, total)).round().long()  # Monitor.video_preview's choice
    assert torch.equal(preview.frames(), video[:, index])


def _one_shot(tmp_path, frames: int) -> list[str]:
    script = tmp_path / "script.toml"
    script.write_text(f'[[shot]]\nprompt = "a red circle moves left"\nframes = {frames}\n')
    return ["--set", f"sampler.num_frames={frames}", "--set", f'generate.prompt_script="{script}"']


def test_a_decoder_error_keeps_the_frames_decoded_before_it(tmp_path, monkeypatch, capsys):
    """The core's synchronous decoder fails on chunk 2: exit 1, chunks 0-1 (5 + 8 frames) are in
    the partial file, the latents made so far are kept, nothing is under a final name."""
    from longlive.model.vae import WanVAE

    original, calls = WanVAE.decode_chunk, []

    def fail_on_chunk_2(self, state, latents):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected decoder failure")
        return original(self, state, latents)

    monkeypatch.setattr(WanVAE, "decode_chunk", fail_on_chunk_2)
    code = main(["run", str(EXPERIMENT), "--set", "generate.save_latents=true", "--run-dir", str(tmp_path)])
    assert code == 1 and "injected decoder failure" in capsys.readouterr().err
    assert not (tmp_path / "video.mp4").exists() and not (tmp_path / "result.json").exists()
    assert read_video(tmp_path / "video.partial.mp4")[0].shape[0] == 5 + 8
    assert "the partial video (13 frames) is kept at" in (tmp_path / "log.txt").read_text()
    assert read_latents(tmp_path / "latents").shape[2] == 6  # chunks 0-2: latents are saved before the decode


def test_a_killed_run_leaves_a_playable_partial_file(tmp_path):
    """SIGKILL mid-run: the fragmented partial mp4 plays back what was written; no final name."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "longlive", "run", str(EXPERIMENT), *_one_shot(tmp_path, 200),
                             "--run-dir", str(tmp_path / "run")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial, seen = tmp_path / "run" / "video.partial.mp4", 0
    try:
        deadline = time.monotonic() + 240
        while seen < 16 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            if partial.exists():
                copy = tmp_path / "copy.mp4"
                copy.write_bytes(partial.read_bytes())
                try:
                    seen = read_video(copy)[0].shape[0]
                except Exception:  # nothing complete yet
                    seen = 0
        assert proc.poll() is None, "the run ended before it could be killed"
        assert seen >= 16, "no frames reached the partial file in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    frames, fps = read_video(partial)
    assert frames.shape[0] >= seen and frames.shape[1:] == (64, 64, 3) and fps == pytest.approx(8.0)
    assert not (tmp_path / "run" / "video.mp4").exists()
