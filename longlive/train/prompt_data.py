"""The "prompts" dataset: captions without videos, for algorithms that generate their own (DMD T2V).

`train.data` names text files (one prompt per line, blank lines and `#` lines skipped; every
chunk of the sample gets the line, as LongLive's MultiTextConcatDataset with a .txt) and/or
prompt scripts (`*.toml`, docs/prompt_scripts.md: each script is one multi-shot sample whose
shots must cover train.num_frames; a shot's first chunk is a cut). A brace/glob pattern may mix
both. Items are {"prompts": one caption per chunk, "fps": 0.0} with no "video": only
`BatchEncoder.encode_prompts` (without first_frame) can read them, so I2V needs video shards.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from longlive.errors import ConfigError

if TYPE_CHECKING:
    from longlive.run import RunContext
    from longlive.train.config import TrainConfig

log = logging.getLogger(__name__)


class PromptDataset:
    """Per-chunk captions of prompt lines and prompt scripts (module docstring)."""

    def __init__(self, samples: list[list[str]]) -> None:
        if not samples:
            raise ConfigError("train.data: the prompt files hold no prompt; write one prompt per line")
        self.samples = samples

    @classmethod
    def from_config(cls, run: RunContext, config: TrainConfig) -> PromptDataset:
        from longlive.prompts import chunk_prompts, load_prompt_script
        from longlive.train.config import resolve_path
        from longlive.train.data import expand_pattern

        chunks = config.num_frames // run.experiment.sampler.frames_per_chunk
        samples: list[list[str]] = []
        files = expand_pattern(resolve_path(config.data, run, "train.data"), where="train.data")
        for file in files:
            if file.endswith(".toml"):
                script = load_prompt_script(file)
                schedule = chunk_prompts(script, num_frames=config.num_frames,
                                         frames_per_chunk=run.experiment.sampler.frames_per_chunk,
                                         where=f"train.data {Path(file).name}")
                samples.append([c.prompt for c in schedule])
            else:
                lines = Path(file).read_text(encoding="utf-8").splitlines()
                samples += [[line.strip()] * chunks for line in lines if line.strip() and not line.startswith("#")]
        log.info("dataset: %d prompt samples from %d files (%s)", len(samples), len(files), config.data)
        return cls(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return {"prompts": list(self.samples[index]), "fps": 0.0}
