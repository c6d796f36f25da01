"""A non-editable install carries every bundled model file, so models load by name from a fresh install."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "src" / "arithlens" / "models"


@pytest.mark.slow
def test_wheel_holds_every_bundled_model_file(tmp_path: Path) -> None:
    bundled = sorted(p.relative_to(ROOT / "src").as_posix() for p in MODELS.rglob("*") if p.is_file())
    if not bundled:
        pytest.skip("no bundled models")
    # Build from a copy so the checkout gains no build/ folder.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("arithlens-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = [path for path in bundled if path not in names]
    assert not missing, missing
    assert any(path.endswith("model.safetensors") for path in bundled)
