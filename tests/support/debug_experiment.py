"""The smallest generate experiment: debug DiT and VAE, random text, CPU (shared by tests)."""
from __future__ import annotations

DEBUG_EXPERIMENT = {
    "run": {"name": "test", "task": "generate", "device": "cpu"},
    "model": {"preset": "debug", "codec": "wan2.2-vae-debug", "text_encoder": "random"},
    "sampler": {"height": 64, "width": 64, "num_frames": 4, "frames_per_chunk": 2, "window_frames": 4, "steps": 2},
    "generate": {"prompt": "a red circle moves left"},
}
