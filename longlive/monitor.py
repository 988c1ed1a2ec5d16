"""Progress bars and TensorBoard output of a run (scalars, images, video previews)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, TypeVar

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


PROGRESS_LOGGER = "longlive.progress"  # the CLI hides it on a terminal console, where the bar shows


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it",
             every_seconds: float = 5.0) -> Iterator[T]:
    """Iterate with a tqdm bar on a terminal and a log line every `every_seconds` (log.txt, CI).

    The log line reads `chunks 12/48 (25%), 3.10 chunk/s, elapsed 0:04, ETA 0:12`.
    """
    from tqdm.auto import tqdm

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    bar = tqdm(iterable, desc=desc, total=total, unit=unit, disable=None, dynamic_ncols=True, leave=False)
    reporter = logging.getLogger(PROGRESS_LOGGER)
    started = last = time.perf_counter()
    done = 0
    try:
        for item in bar:
            yield item
            done += 1
            now = time.perf_counter()
            if now - last >= every_seconds or done == total:
                last = now
                reporter.info(progress_line(desc, done, total, now - started, unit))
    finally:
        bar.close()


def progress_line(desc: str, done: int, total: int | None, elapsed: float, unit: str) -> str:
    """`desc done/total (pct), rate unit/s, elapsed h:mm:ss, ETA h:mm:ss` (no total: no ETA)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    text = f"{desc} {done}" + (f"/{total} ({100 * done / total:.0f}%)" if total else "")
    text += f", {rate:.2f} {unit}/s, elapsed {_clock(elapsed)}"
    if total and rate > 0:
        text += f", ETA {_clock((total - done) / rate)}"
    return text


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PreviewFrames:
    """Keeps only the frames `Monitor.video_preview` would pick from a video of `total_frames`
    frames, from pieces that stream past in order: the preview of a long video costs
    `max_frames` frames of memory, not the video."""

    def __init__(self, total_frames: int, max_frames: int = 8) -> None:
        import torch

        count = min(max_frames, total_frames)
        self.wanted = sorted(set(torch.linspace(0, total_frames - 1, count).round().long().tolist()))
        self.kept: list[torch.Tensor] = []  # [3, 1, H, W] each
        self._seen = 0

    def add(self, video: torch.Tensor) -> None:
        """The next frames [3, t, H, W] of the video."""
        start, self._seen = self._seen, self._seen + video.shape[1]
        self.kept += [video[:, i - start: i - start + 1].clone() for i in self.wanted if start <= i < self._seen]

    def frames(self) -> torch.Tensor:
        """The kept frames [3, n, H, W] (n <= max_frames)."""
        import torch

        return torch.cat(self.kept, dim=1) if self.kept else torch.empty(0)


class Monitor:
    """TensorBoard writer of one run; a no-op when the run has no directory (tests, validate)."""

    def __init__(self, log_dir: Path | None) -> None:
        self.log_dir = log_dir
        self._writer = None

    @property
    def writer(self):
        if self._writer is None and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, float(value), step)

    def video_preview(self, tag: str, video: torch.Tensor, step: int = 0, max_frames: int = 8) -> None:
        """Log evenly spaced frames of `video` ([3, T, H, W] in [-1, 1]) as one image strip."""
        if self.writer is None or video.numel() == 0:
            return
        frames = video.shape[1]
        import torch

        index = torch.linspace(0, frames - 1, min(max_frames, frames)).round().long()
        strip = video[:, index].float().clamp(-1, 1).add(1).div(2)  # [3, n, H, W] in [0, 1]
        strip = strip.permute(0, 2, 1, 3).reshape(3, strip.shape[2], -1)  # [3, H, n*W]
        self.writer.add_image(tag, strip, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """One hparams session (TensorBoard's HParams tab): `hparams` flat scalars, `metrics` flat numbers.

        Each metric is also logged as the scalar `result/<name>`, which the HParams tab reads its values from.
        Only the session is written, no experiment summary: TensorBoard then builds the HParams table from
        every session under its logdir (it would take the columns of one arbitrary experiment summary).
        """
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        metric_tags = {f"result/{name}": float(value) for name, value in metrics.items()}
        _, session_start, session_end = hparams_summaries(_hparam_values(hparams), metric_tags)
        for summary in (session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metric_tags.items():
            self.writer.add_scalar(tag, value, 0)
        self.writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def log_run_hparams(monitor: Monitor, experiment_table: dict, record: dict) -> None:
    """Log a finished run's resolved experiment as hparams and its result's numbers as metrics, then close."""
    monitor.hparams(flat_values(experiment_table), numeric_leaves(record))
    monitor.close()


def numeric_leaves(record: dict, prefix: str = "") -> dict[str, float]:
    """The numbers in a nested dict as dotted keys, e.g. {"toybench.overall.color": 0.98} (lists, bools skipped)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numeric_leaves(value, prefix=f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def flat_values(table: dict, prefix: str = "") -> dict[str, Any]:
    """A nested table as dotted keys with scalar values (lists joined with commas, None left out)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_values(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ", ".join(map(str, value))
        elif value is not None:
            out[name] = value
    return out


def _hparam_values(hparams: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """TensorBoard takes bool, int, float and str hparams only; anything else is written as its str()."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
