"""A training command interrupted right after a checkpoint and run again ends with the same bytes as an
uninterrupted run, and two uninterrupted runs agree: what "deterministic, resumable" promises (on one machine;
float results of MKL and oneDNN kernels can differ between CPU generations)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import miniworld.training as training

STEPS, CKPT_EVERY, STOP_AFTER = 4, 2, 2
COMMANDS = {
    "train_vae": lambda out: ["--out", str(out / "vae")],
    "train_clip": lambda out: ["--out", str(out / "clip"), "--text-encoder-out", str(out / "text_encoder")],
}


class Interrupted(Exception):
    """Stands for the process being killed."""


def _train(command: str, root: Path, monkeypatch) -> Path:
    out = root / "out"
    argv = [command, "--steps", str(STEPS), "--ckpt-every", str(CKPT_EVERY), "--batch-size", "8",
            "--corpus-limit", "32", "--workdir", str(root / "work"), *COMMANDS[command](out)]
    monkeypatch.setattr(sys, "argv", argv)
    importlib.import_module(f"miniworld.{command}").main()
    return out


def _dies_after_checkpoint(step_to_die: int):
    real_save = training.Run.save

    def save(self, step, modules):
        real_save(self, step, modules)
        if step == step_to_die:
            raise Interrupted

    return save


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_interrupted_run_resumes_to_the_bytes_of_an_uninterrupted_one(command, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "TRAIN_DIR", tmp_path / "corpus")  # the rendered corpus cache, not the repo's
    straight = _files(_train(command, tmp_path / "a", monkeypatch))
    again = _files(_train(command, tmp_path / "b", monkeypatch))
    with monkeypatch.context() as m, pytest.raises(Interrupted):
        m.setattr(training.Run, "save", _dies_after_checkpoint(STOP_AFTER))
        _train(command, tmp_path / "c", m)
    assert not (tmp_path / "c" / "out").exists() or not any((tmp_path / "c" / "out").rglob("*.safetensors"))
    resumed = _files(_train(command, tmp_path / "c", monkeypatch))

    weights = [name for name in straight if name.endswith(".safetensors")]
    assert weights, "the command saved no safetensors"
    assert again == straight
    assert resumed == straight
