"""Every shipped preset validates, and docs/CONFIG.md documents every config field."""

from __future__ import annotations

from pathlib import Path

import pytest

from mace_cli.config_io import load_config
from mace_core.config import MaceConfig

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_validates(path):
    cfg = load_config(path)
    assert cfg.concepts


def test_four_paper_settings_on_the_miniworld():
    names = {p.stem for p in PRESETS}
    assert {"miniworld-objects", "miniworld-identities", "miniworld-styles", "miniworld-explicit"} <= names


def test_every_field_is_documented():
    doc = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    missing = []
    for section, field in MaceConfig.model_fields.items():
        ann = field.annotation
        if hasattr(ann, "model_fields"):
            missing += [f"{section}.{f}" for f in ann.model_fields if f"`{section}.{f}`" not in doc]
        elif f"`{section}`" not in doc:
            missing.append(section)
    assert not missing, f"undocumented config fields: {missing}"
