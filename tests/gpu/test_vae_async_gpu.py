"""GPU checks of vae_async: stream and device modes equal the synchronous decoder bit for bit.

Run on the GPU machine: `python -m pytest -m gpu tests/gpu` (CI deselects the `gpu` marker).
The device test needs two GPUs.
"""
from __future__ import annotations

import pytest
import torch

from longlive.config import experiment_from_table
from longlive.decode import SyncDecoder
from longlive.run import make_run


def _run(mode: str, device: str = "cuda:0"):
    table = {"run": {"name": "t", "task": "generate", "device": device, "dtype": "fp32", "plugins": ["vae_async"]},
             "model": {"preset": "debug", "codec": "wan2.2-vae-debug", "text_encoder": "random"},
             "sampler": {"height": 64, "width": 64, "num_frames": 12, "frames_per_chunk": 2, "window_frames": 4},
             "generate": {"prompt": "x"}, "plugins": {"vae_async": {"mode": mode, "queue_depth": 1}}}
    return make_run(experiment_from_table(table), create_dir=False)


def _decode(decoder, latents):
    pieces = []
    try:
        for i, chunk in enumerate(latents.split(2, dim=2)):
            # produced on the main stream right before the push: the hand-over must wait for it
            chunk = (chunk * 2.0) / 2.0
            decoder.push(i, chunk)
            del chunk  # the decoder alone keeps the latents alive
            pieces += decoder.ready()
        pieces += decoder.flush()
    finally:
        decoder.close()
    return torch.cat(pieces, dim=2)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["stream", "device"])
def test_gpu_modes_equal_the_synchronous_decoder(mode):
    if mode == "device" and torch.cuda.device_count() < 2:
        pytest.skip("device mode needs two GPUs")
    from longlive.assembly import make_decoder

    run = _run(mode)
    run.hook.longlive_check_compat(run=run)
    codec = run.codec_spec.build(run)
    latents = torch.randn(1, 48, 12, 4, 4, generator=torch.Generator().manual_seed(0)).to(run.device)
    expected = _decode(SyncDecoder(codec), latents)
    for _ in range(2):  # twice: index 0 starts a new stream state
        got = _decode(make_decoder(run, codec), latents)
        assert got.device.type == "cpu" and torch.equal(got, expected)


@pytest.mark.gpu
def test_device_mode_refused_on_one_gpu():
    if torch.cuda.device_count() != 1:
        pytest.skip("needs exactly one GPU")
    from longlive.errors import ConfigError

    run = _run("device")
    with pytest.raises(ConfigError, match="plugins.vae_async.mode.*stream"):
        run.hook.longlive_check_compat(run=run)
