"""The input files an experiment names (prompt script, image), opened and checked before anything
is built, so that `validate` rejects what `run` would fail on."""
from __future__ import annotations

from longlive.config import Experiment
from longlive.prompts import chunk_prompts, load_prompt_script


def check_generate_inputs(experiment: Experiment) -> None:
    """Parse [generate]'s prompt script against [sampler] and decode its image (ConfigError if bad)."""
    g, s = experiment.generate, experiment.sampler
    if g is None:
        return
    if g.prompt_script is not None:
        chunk_prompts(load_prompt_script(g.prompt_script), num_frames=s.num_frames,
                      frames_per_chunk=s.frames_per_chunk, where="generate.prompt_script")
    if g.image is not None:
        from longlive.media import read_image

        read_image(g.image, height=s.height, width=s.width)
