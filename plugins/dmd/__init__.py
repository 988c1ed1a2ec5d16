"""dmd: DMD distillation of the AR model into few-step (4 or 2 UniPC steps) LoRA students
(LongLive 2.0 §6.5): generator, frozen real score with guidance, LoRA fake-score critic."""
from __future__ import annotations

from longlive_plugins.dmd.plugin import DMD, DMDConfig

__all__ = ["DMD", "DMDConfig"]
