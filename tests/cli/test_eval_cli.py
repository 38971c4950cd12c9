"""``mace erase --evaluate`` and ``mace eval``: before/after tables from the evaluation flow, cached reruns."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from mace_cli.main import app
from mace_core import recognisers
from tests.cli.conftest import small_config

runner = CliRunner()


def fake_recogniser(monkeypatch):
    """Deterministic judge: an image 'shows' its concept iff its mean red exceeds its mean blue."""
    def load(name, device="cpu"):
        def recognise(images, items):
            return [bool(np.asarray(i.convert("RGB"), float)[..., 0].mean() > np.asarray(i.convert("RGB"), float)
                         [..., 2].mean()) for i in images]
        return recognise

    monkeypatch.setattr(recognisers, "load_recogniser", load)
    monkeypatch.setattr(recognisers, "check_recognisable", lambda name, concepts, **kw: None)


def test_erase_evaluate_prints_before_and_after(tmp_path, write_config, cli_model, monkeypatch):
    fake_recogniser(monkeypatch)
    store = str(tmp_path / "store")
    data = small_config(cli_model, store, evaluation={"kept": [{"name": "dog", "type": "object", "mapping": "not dog"}],
                                                      "seeds_per_prompt": 2, "steps": 2, "prompts": "paper"})
    result = runner.invoke(app, ["erase", write_config(data), "--evaluate"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "│ before" in out and "│ after" in out and "before = " in out
    assert "erased concepts" in out and "kept concepts" in out
    assert "cat" in out and "dog" in out  # per-concept rows
    # mace eval on the recorded run: same evaluation, all cached (no generation this time)
    import mace_core.generate as gen

    calls = []
    orig = gen.generate_images
    monkeypatch.setattr(gen, "generate_images", lambda *a, **k: calls.append(1) or orig(*a, **k))
    again = runner.invoke(app, ["eval", "cli-run", "--store", store, "--kept", "dog", "--seeds", "2",
                                "--steps", "2", "--prompts", "paper"])
    assert again.exit_code == 0, again.output
    assert "│ before" in again.stdout and calls == []


def test_eval_rejects_kept_that_is_erased(tmp_path, write_config, cli_model):
    data = small_config(cli_model, str(tmp_path / "s"), evaluation={"kept": [{"name": "cat", "type": "object",
                                                                             "mapping": "x"}]})
    result = runner.invoke(app, ["erase", write_config(data), "--evaluate"])
    assert result.exit_code == 1 and "evaluation.kept" in result.stderr and "Traceback" not in result.output
