"""mace_core must never import prefect (STYLE.md 1): import every module in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_mace_core_does_not_import_prefect():
    code = (
        "import importlib, pkgutil, sys, mace_core\n"
        "mods = [m.name for m in pkgutil.iter_modules(mace_core.__path__, 'mace_core.')]\n"
        "for m in mods: importlib.import_module(m)\n"
        "assert 'mace_core.cfr' in sys.modules and 'mace_core.prompts' in sys.modules\n"
        "bad = sorted(k for k in sys.modules if k == 'prefect' or k.startswith('prefect.'))\n"
        "print(len(mods), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
