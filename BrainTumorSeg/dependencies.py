"""Which of the package's Python dependencies (``Resources/requirements.txt``) are missing.

The Slicer module asks before installing them; where Slicer has ``slicer.packaging.pip_ensure``
it does the check itself, older Slicer versions use :func:`missing_requirements`. Only ``name>=version``
lines are understood, which is all requirements.txt uses. Standard library only.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from .resources import resources_dir

# PyTorch comes from the SlicerPyTorch extension, not requirements.txt; the floor is pyproject.toml's.
TORCH_REQUIREMENT = ">=2.1"

_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?\s*$")


def requirements_file() -> Path:
    return resources_dir() / "requirements.txt"


def read_requirements(path: Path | None = None) -> list[tuple[str, str | None]]:
    """(distribution name, minimum version or None) of each requirement line; ValueError on other forms."""
    out = []
    for number, line in enumerate((path or requirements_file()).read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = _LINE.match(text)
        if not match:
            raise ValueError(f"requirements.txt line {number}: only 'name>=version' is supported, got {text!r}")
        out.append((match.group(1), match.group(2)))
    return out


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric release parts of a version string ("2.1.0+cpu" -> (2, 1, 0))."""
    parts = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def missing_requirements(path: Path | None = None) -> list[str]:
    """Requirement strings (``name>=version``) not satisfied by the installed distributions."""
    missing = []
    for name, minimum in read_requirements(path):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or (minimum and version_tuple(installed) < version_tuple(minimum)):
            missing.append(f"{name}>={minimum}" if minimum else name)
    return missing


def installed_below(name: str, minimum: str) -> str | None:
    """The installed version of distribution ``name`` if it is older than ``minimum``, else None (also when absent)."""
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
    return installed if version_tuple(installed) < version_tuple(minimum) else None


def torch_too_old() -> str | None:
    """The installed PyTorch version if it is below :data:`TORCH_REQUIREMENT`, else None."""
    return installed_below("torch", TORCH_REQUIREMENT.removeprefix(">="))
