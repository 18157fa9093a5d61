"""Where the bundled resources (models, sample data) are.

In a source checkout and in Slicer, ``Resources/`` sits next to the package; an
installed wheel carries it inside the package as ``BrainTumorSeg/Resources``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resources_dir() -> Path:
    """The Resources folder: inside the installed package, else beside it."""
    inside = _PACKAGE / "Resources"
    return inside if inside.is_dir() else _PACKAGE.parent / "Resources"


def sample_case_dir() -> Path:
    """Folder of the bundled sample case (BraTS-named files, with ground truth)."""
    folders = sorted(p for p in (resources_dir() / "SampleData").iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"no sample case under {resources_dir() / 'SampleData'}")
    return folders[0]
