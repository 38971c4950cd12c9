"""``mace`` through typer's CliRunner: bad input fails in one line before any work; a real erase/add cycle."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mace_cli.main import app
from tests.cli.conftest import small_config

runner = CliRunner()


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    text = result.stderr.strip()  # progress bars and tables go to stdout, the error alone to stderr
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("error: "), text
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    "change, needles",
    [
        ({"lora": {"steps": 1, "bogus": 3}}, ("lora.bogus", "Extra inputs")),
        ({"lora": {"learning_rate": 5.0}}, ("lora.learning_rate", "less than or equal to 1")),
        ({"colour": "red"}, ("colour",)),
        ({"concepts": []}, ("concepts is empty",)),
        ({"concepts": ["cat:object:forest", "Cat:object:sky"]}, ("duplicate concept",)),
        ({"concepts": ["cat:object:cat"]}, ("maps to itself",)),
        ({"concepts": ["cat:animal:forest"]}, ("unknown concept type",)),
        ({"concepts": ["   :object:forest"]}, ("concept name is empty",)),
        ({"cfr": {"lam": 0.0}}, ("cfr.lam",)),
    ],
)
def test_invalid_config_is_one_line_naming_the_field(tmp_path, write_config, change, needles):
    data = small_config("unused-model", str(tmp_path / "store"))
    data.update(change)
    _one_line_error(runner.invoke(app, ["erase", write_config(data)]), *needles)
    assert not (tmp_path / "store").exists()  # nothing was started


def test_unknown_model_path(tmp_path, write_config):
    data = small_config(str(tmp_path / "no-such-model"), str(tmp_path / "store"))
    _one_line_error(runner.invoke(app, ["erase", write_config(data)]), "model.path", "no-such-model")


def test_missing_caption_file(tmp_path, write_config, cli_model):
    data = small_config(cli_model, str(tmp_path / "store"), cfr={"lam": 0.0, "prior_weight": 1.0},
                        prior={"captions": str(tmp_path / "missing.json")})
    _one_line_error(runner.invoke(app, ["erase", write_config(data)]), "prior.captions", "missing.json")


def test_missing_config_file_and_bad_yaml(tmp_path):
    _one_line_error(runner.invoke(app, ["erase", str(tmp_path / "nope.yaml")]), "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("concepts: [cat\nmodel: {", encoding="utf-8")
    _one_line_error(runner.invoke(app, ["erase", str(bad)]), "cannot parse")


def test_toml_config_is_accepted_up_to_the_model_check(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'name = "t"\nconcepts = ["cat:object:forest"]\n[model]\npath = "/nonexistent/model"\n'
        "[cfr]\nlam = 1.0\n[fusion]\nlam = 1.0\n", encoding="utf-8")
    _one_line_error(runner.invoke(app, ["erase", str(cfg)]), "model.path")


def test_erase_add_status_artifacts_and_tamper(tmp_path, write_config, cli_model):
    store = str(tmp_path / "store")
    cfg = write_config(small_config(cli_model, store))
    # 1. erase: summary table with hits/misses and the output path
    r = runner.invoke(app, ["erase", cfg])
    assert r.exit_code == 0, r.output
    assert "cli-run" in r.output and "lora" in r.output and "output:" in r.output
    # 2. add with defaults taken from the run (type object, mapping forest); bad adds fail in one line
    _one_line_error(runner.invoke(app, ["add", "cli-run", "cat", "--store", store]), "already erased")
    _one_line_error(runner.invoke(app, ["add", "no-such-run", "dog", "--store", store]), "not recorded")
    _one_line_error(runner.invoke(app, ["add", "cli-run", "dog:object:dog", "--store", store]), "maps to itself")
    r = runner.invoke(app, ["add", "cli-run", "dog", "--store", store])
    assert r.exit_code == 0, r.output
    # 3. status / ls / verify
    r = runner.invoke(app, ["status", "cli-run", "--store", store])
    assert r.exit_code == 0 and "dog" in r.output and "forest" in r.output and "present" in r.output, r.output
    r = runner.invoke(app, ["artifacts", "ls", "--store", store])
    assert r.exit_code == 0 and "lora" in r.output, r.output
    assert runner.invoke(app, ["artifacts", "verify", "--store", store]).exit_code == 0
    # 4. generate from the run's exported model
    out = tmp_path / "gen"
    r = runner.invoke(app, ["generate", "cli-run", "a photo of a dog", "--store", store, "--out", str(out),
                            "--steps", "2"])
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("*.png"))) == 1
    # 5. tamper with a LoRA: verify reports it, a rerun stops with one line before any model work
    from tasks._cache import open_store

    st = open_store(store)
    lora = st.ls("lora")[0]
    f = next(p for p in (st.path(st.get("lora", lora["key"])).iterdir()) if p.suffix == ".safetensors")
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    r = runner.invoke(app, ["artifacts", "verify", "--store", store])
    assert r.exit_code == 1 and "corrupt" in r.output
    _one_line_error(runner.invoke(app, ["erase", cfg]), "lora/", "corrupt")
    r = runner.invoke(app, ["artifacts", "verify", "--repair", "--store", store])
    assert r.exit_code == 0 and "deleted" in r.output, r.output
    assert runner.invoke(app, ["artifacts", "verify", "--store", store]).exit_code == 0
    r = runner.invoke(app, ["erase", cfg])  # rebuilds exactly the deleted LoRA
    assert r.exit_code == 0, r.output
    # 6. gc keeps what the recorded runs reach
    assert runner.invoke(app, ["artifacts", "gc", "--store", store]).exit_code == 0


def test_quiet_loading_mutes_the_model_loading_bars_and_restores_them(capfd):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from mace_cli.main import quiet_loading
    from miniworld.paths import PIPELINE_DIR

    def load() -> str:
        StableDiffusionPipeline.from_pretrained(str(PIPELINE_DIR), local_files_only=True)
        return capfd.readouterr().err

    assert "Loading pipeline components" in load()  # the bars this guards against
    with quiet_loading(verbose=False):
        assert "Loading" not in load()
    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
    with quiet_loading(verbose=True):
        assert "Loading pipeline components" in load()
