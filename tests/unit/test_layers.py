"""The package layout is the architecture: layers import only downwards, the SIP core is
sans-IO, the engine knows no HTTP or Redis (contracts in ``pyproject.toml``, checked by
import-linter). The second test proves the check bites: a copy of the package with one
wrong import breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the ``sipdialer`` package found under ``root``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_contract() -> None:
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_a_wrong_import_breaks_the_layers(tmp_path: Path) -> None:
    shutil.copytree(REPO / "sipdialer", tmp_path / "sipdialer")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    message = tmp_path / "sipdialer" / "sip" / "message.py"
    # the protocol core reaching up into the call engine, and into asyncio
    message.write_text(
        message.read_text() + "\nimport asyncio  # noqa\nimport sipdialer.engine.call  # noqa\n"
    )
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    assert "Layers import only downwards BROKEN" in out.stdout
    assert "The SIP core is sans-IO BROKEN" in out.stdout
    assert "sipdialer.sip.message -> sipdialer.engine.call" in out.stdout
