"""Compute device and precision: bf16 autocast on CPUs with native bf16 (AVX512-BF16 / AMX)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch

from .errors import InputError


@lru_cache(maxsize=1)
def cpu_has_native(kind: str) -> bool:
    """True when the CPU computes ``kind`` (bf16, fp16) natively (flags avx512_<kind> or amx_<kind> in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return f"avx512_{kind}" in flags or f"amx_{kind}" in flags


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively."""
    return cpu_has_native("bf16")


def warn_if_emulated(device: torch.device, precision: str) -> None:
    """Log a warning when ``precision`` asks the CPU for a half precision it has no instructions for."""
    if device.type != "cpu" or precision not in ("bf16", "fp16"):
        return
    if cpu_has_bf16() if precision == "bf16" else cpu_has_native("fp16"):
        return
    logging.getLogger(__name__).warning(
        "--precision %s: this CPU has no native %s, so PyTorch emulates it, several times slower than fp32 (bf16 took "
        "9x as long on an AVX2 CPU); --precision auto runs fp32 here",
        precision,
        precision,
    )


def mps_available() -> bool:
    """True on Apple silicon with PyTorch's MPS backend."""
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; a device asked for by name must be there (InputError naming
    ``--device`` otherwise, before any work)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    if name == "cuda" and not torch.cuda.is_available():
        why = "no CUDA GPU found" if torch.backends.cuda.is_built() else f"PyTorch {torch.__version__} is built without CUDA"
        raise InputError("--device", f"cuda is not available: {why}; use --device auto or cpu")
    if name == "mps" and not mps_available():
        raise InputError("--device", "mps is not available (Apple silicon GPUs only); use --device auto or cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` (auto, fp32, bf16, fp16) on ``device``; None means fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """How a model card names an autocast dtype: ``bfloat16``, ``float16``, or ``fp32`` for None."""
    return str(dtype).replace("torch.", "") if dtype else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device``, or nothing for fp32."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
