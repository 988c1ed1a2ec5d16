"""Item 10, one test per case: each bad input or fault gives exit 2 (input) or 1 (runtime) with
one line and loses nothing."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from fault_helpers import BASE, TRAIN, cli, write_experiment
from longlive.model.checkpoint import read_state_dict, save_safetensors_atomic
from longlive.model.dit import WanDiT
from longlive.model.presets import DIT_PRESETS
from longlive.train import checkpoint as ckpt


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def _with(table: dict, section: str, **values) -> dict:
    return {**table, section: {**table.get(section, {}), **values}}


def test_toybench_checks_prompts_before_generating_and_cuts_long_values(tmp_path, capsys):
    prompt = "a free-form prompt about a cat " * 350_000  # ~10 MB
    exp = write_experiment(tmp_path, _with(BASE, "generate", prompt=prompt))
    assert cli("run", exp, "--run-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert len(err) < 2000 and f"({len(prompt)} characters)" in err and "score = false" in err
    assert not (tmp_path / "run" / "video.mp4").exists()  # refused before generating, not after


def test_malicious_pickle_is_refused_in_one_line_without_unsafe_advice(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"blocks.0.weight": Payload()}, tmp_path / "evil.pt")
    exp = write_experiment(tmp_path, _with(BASE, "model", checkpoint="evil.pt"))
    assert cli("run", exp, "--run-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "holds pickled Python objects" in lines[0] and "refused" in lines[0]
    assert "weights_only" not in err.replace("torch.load(weights_only=True)", "") and "Re-running" not in err
    assert not marker.exists()


def test_init_from_error_names_train_init_from(tmp_path, capsys):
    (tmp_path / "shards").mkdir()
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    table = _with(TRAIN, "train", init_from="broken.safetensors")
    from longlive_plugins.toyworld.shards import write_shards

    write_shards(tmp_path / "shards", 4, 4, 0, "train", 8, size=32, max_shots=1, chunk_frames=2)
    assert cli("run", write_experiment(tmp_path, table), "--run-dir", tmp_path / "run") == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("error: train.init_from:") and "model.checkpoint" not in line


def test_old_format_torch_file_is_read_and_garbage_named_plainly(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(read_state_dict(tmp_path / "old.pt")["w"], torch.ones(2))  # no mmap complaint
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02 junk")
    with pytest.raises(Exception) as info:
        read_state_dict(tmp_path / "junk.pt", where="model.checkpoint")
    assert "mmap" not in str(info.value) and str(info.value).startswith("model.checkpoint:")
    assert "\n" not in str(info.value)


def test_nonfinite_checkpoint_is_refused_instead_of_a_black_video(tmp_path, capsys):
    state = {k: torch.full_like(v, math.nan) for k, v in WanDiT(DIT_PRESETS["debug"]).state_dict().items()}
    save_safetensors_atomic(state, tmp_path / "nan.safetensors")
    exp = write_experiment(tmp_path, _with(BASE, "model", checkpoint="nan.safetensors"))
    assert cli("run", exp, "--run-dir", tmp_path / "run") == 2
    (line,) = _error_lines(capsys)
    assert "model.checkpoint" in line and "NaN or inf" in line
    assert not (tmp_path / "run" / "video.mp4").exists()


def test_grad_clip_nan_is_refused(tmp_path, capsys):
    (tmp_path / "shards").mkdir()
    assert cli("validate", write_experiment(tmp_path, _with(TRAIN, "train", grad_clip=math.nan))) == 2
    (line,) = _error_lines(capsys)
    assert "train.grad_clip: expected a finite number, found nan" in line


def test_two_switches_at_one_frame_are_refused(tmp_path, capsys):
    a, b = "a red circle moves left on a black background", "a red circle moves up on a black background"
    switches = f'switches = [{{at_frame = 2, prompt = "{b}"}}, {{at_frame = 2, prompt = "{a}"}}]\n'
    (tmp_path / "s.toml").write_text(f'[[shot]]\nprompt = "{a}"\nframes = 4\n' + switches)
    table = {**_with(BASE, "generate", prompt_script="s.toml"), "generate": {"prompt_script": "s.toml"}}
    assert cli("validate", write_experiment(tmp_path, table)) == 2
    (line,) = _error_lines(capsys)
    assert "two switches at_frame = 2" in line


def test_toybench_outputs_are_written_atomically(tmp_path):
    assert cli("run", write_experiment(tmp_path, BASE), "--run-dir", tmp_path / "run") == 0
    names = os.listdir(tmp_path / "run")
    assert {"toybench.json", "toybench.png", "video.mp4"} <= set(names)
    assert not [n for n in names if ".tmp" in n]  # written under temporary names, then renamed
    assert "overall" in json.loads((tmp_path / "run" / "toybench.json").read_text())


def test_unexpected_failure_keeps_the_traceback_off_the_console(tmp_path, capsys, monkeypatch):
    import longlive.run

    def crash(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(longlive.run, "run_task", crash)  # a bug inside a task
    assert cli("run", write_experiment(tmp_path, BASE), "--run-dir", tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line == f"error: RuntimeError: boom (traceback in {tmp_path / 'run' / 'log.txt'})"
    assert "Traceback" in (tmp_path / "run" / "log.txt").read_text()
    monkeypatch.setattr(longlive.run, "check_experiment", crash)  # validate has no log file: it says how to see it
    assert cli("validate", write_experiment(tmp_path, BASE)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "rerun with -v for the traceback" in err


def test_full_disk_is_named_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint({"step": 1, "w": torch.ones(3)}, tmp_path)

    def full_disk(obj, f):
        f.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4224 vs 4118")

    monkeypatch.setattr(ckpt, "_serialize", full_disk)
    with pytest.raises(ckpt.LongLiveError) as info:
        ckpt.save_checkpoint({"step": 2, "w": torch.zeros(3)}, tmp_path)
    assert "is full" in str(info.value) and "MiB free" in str(info.value) and "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["last.pt"] and ckpt.load_checkpoint(tmp_path)["step"] == 1
