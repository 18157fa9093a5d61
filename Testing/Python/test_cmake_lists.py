"""The Slicer extension's CMakeLists.txt lists every package file and resource (else the packaged extension lacks them)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def listed(variable: str) -> set[str]:
    text = (ROOT / "CMakeLists.txt").read_text()
    block = re.search(rf"set\({variable}\n(.*?)\n\s*\)", text, re.S)
    assert block, variable
    return {
        line.strip().replace("${MODULE_NAME}", "BrainTumorSegmentation") for line in block.group(1).splitlines() if line.strip()
    }


def test_every_package_python_file_is_listed():
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "BrainTumorSeg").rglob("*.py")}
    assert files - listed("MODULE_PYTHON_SCRIPTS") == set()


def test_every_resource_is_listed_and_exists():
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "Resources").rglob("*") if p.is_file()}
    resources = listed("MODULE_PYTHON_RESOURCES")
    assert files - resources == set()
    assert {r for r in resources if not (ROOT / r).is_file()} == set()
