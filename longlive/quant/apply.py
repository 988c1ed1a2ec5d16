"""The applier: convert a model's linears through a quantization format, for one role.

Which linears: every `nn.Linear` except those the model keeps in high precision (its
`KEEP_HIGH_PRECISION`, e.g. WanDiT's embeddings, time projection and head, as LongLive keeps
them) and those the experiment skips (`quant.skip`). A pattern is an exact module name, which
also covers the modules under it (`head` covers `head.head`), or `re:<regex>` matched against
the whole fully qualified name (`re:blocks\\.0\\..*`).

Which path: `mode = "real"` needs the format's probe to pass (else one ConfigError with the
probe's reason); `"emulate"` always emulates; `"auto"` takes the real path where it can run and
otherwise emulates, logging why at WARNING. The report says what ran.

A model loaded from a packed checkpoint (longlive/quant/packed.py) is already converted where the
checkpoint says; the applier then converts nothing more and reports those modules.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Iterable

import attrs
import torch
from torch import nn

from longlive.errors import ConfigError
from longlive.quant.format import NONE, ROLES, QuantFormat, is_quantized, packed_bytes, quantized_modules

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class QuantReport:
    """What quantizing one role did: recorded in result.json and versions.json."""

    role: str
    format: str
    path: str  # "real" | "emulate" | "none"
    why: str = ""  # why the real path did not run (auto mode), else ""
    converted: int = 0  # modules replaced
    kept: int = 0  # linears left in high precision (keep list and skip list)
    packed_bytes: int = 0  # bytes of packed weights (values + scales + amax + metadata)
    from_checkpoint: bool = False  # loaded packed from model.checkpoint (not quantized at startup)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def matches(fqn: str, patterns: Iterable[str]) -> bool:
    """Whether module `fqn` is named by a pattern: exact name (or a module under it), or `re:` full match."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], fqn):
                return True
        elif fqn == pattern or fqn.startswith(pattern + "."):
            return True
    return False


def select_path(fmt: QuantFormat, mode: str, device: torch.device, *, where: str) -> tuple[str, str]:
    """("real" | "emulate", why the real path is not taken) for `mode` on `device`."""
    if mode == "emulate":
        return "emulate", "quant.mode = \"emulate\""
    ok, why = fmt.probe(device)
    if ok:
        return "real", ""
    if mode == "real":
        raise ConfigError(f"{where}: format {fmt.name!r} cannot run its real path on {device}: {why}; "
                          f"set quant.mode = \"emulate\" (or \"auto\") to emulate it")
    log.warning("%s: format %s emulated on %s (%s)", where, fmt.name, device, why)
    return "emulate", why


def quantize_model(model: nn.Module, fmt: QuantFormat, *, role: str, path: str, training: bool,
                   skip: Iterable[str] = (), why: str = "") -> QuantReport:
    """Replace the eligible linears of `model` in place by `fmt.convert(...)`; see the module docstring."""
    keep = tuple(high_precision_modules(model)) + tuple(skip)
    targets, kept = [], 0
    for fqn, module in model.named_modules():
        if not isinstance(module, nn.Linear) or is_quantized(module):
            continue
        if matches(fqn, keep):
            kept += 1
            continue
        bad = [d for d in (module.in_features, module.out_features) if d % fmt.block_size]
        if bad:
            raise ConfigError(f"quant.{role}: {fqn} ({module.out_features} x {module.in_features}) is not divisible "
                              f"by the block size {fmt.block_size} of format {fmt.name!r}; add \"{fqn}\" to quant.skip")
        targets.append(fqn)
    for fqn in targets:
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, fmt.convert(getattr(parent, child), role=role, training=training, path=path))
    report = QuantReport(role=role, format=fmt.name, path=path, why=why, converted=len(targets), kept=kept,
                         packed_bytes=packed_bytes(model))
    log.info("quant %s: %d linears -> %s (%s path), %d kept, %.1f MiB packed", role, report.converted, fmt.name,
             path, kept, report.packed_bytes / 2**20)
    return report


def high_precision_modules(model: nn.Module) -> tuple[str, ...]:
    """The model's keep list (patterns as in `matches`); a model without one keeps nothing."""
    return tuple(getattr(model, "KEEP_HIGH_PRECISION", ()))


def format_object(value: Any) -> QuantFormat:
    """A registered format: the object itself, or a factory (e.g. a Lazy reference) that makes it."""
    return value if isinstance(value, QuantFormat) else value()


def check_real_paths(run: Any) -> None:
    """With `quant.mode = "real"`, every role's format must run its real path on the run's device:
    one ConfigError naming the role and the probe's reason, before any weights load."""
    q = run.experiment.quant
    if q.mode != "real":
        return
    for role in ROLES:
        name = getattr(q, role)
        if name != NONE:
            fmt = format_object(run.components.get("quant_format", name, where=f"quant.{role}").value)
            select_path(fmt, "real", run.device, where=f"quant.{role}")


def quantize_for_role(model: nn.Module, *, role: str, training: bool, run: Any) -> QuantReport:
    """Apply the format `[quant]` names for `role` (the core's longlive_quantize_model); records the report."""
    q = run.experiment.quant
    name = getattr(q, role, NONE)
    if name == NONE:
        report = QuantReport(role=role, format=NONE, path=NONE)
    else:
        fmt = format_object(run.components.get("quant_format", name, where=f"quant.{role}").value)
        path, why = select_path(fmt, q.mode, run.device, where=f"quant.{role}")
        loaded = quantized_modules(model)
        if loaded:  # converted for a packed checkpoint: it decided which linears are quantized
            report = QuantReport(role=role, format=fmt.name, path=path, why=why, converted=len(loaded),
                                 kept=sum(isinstance(m, nn.Linear) for m in model.modules()),
                                 packed_bytes=packed_bytes(model), from_checkpoint=True)
            log.info("quant %s: %d packed linears from the checkpoint (%s, %s path), %d linears in high precision",
                     role, report.converted, fmt.name, path, report.kept)
        else:
            report = quantize_model(model, fmt, role=role, path=path, training=training, skip=q.skip, why=why)
    run.quant[role] = report.to_dict()
    return report
