"""The choices a user makes for one segmentation run, and the ``brain-tumor-seg segment`` arguments they become.

The Slicer panel binds these enums to its combo boxes (each enum's ``label`` is the text shown);
:func:`segment_arguments` turns a choice into CLI flags. ``MODEL`` ("model default") adds no
flag, so the model card decides. Standard library only.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MODALITY_FLAGS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")


class _Labelled(enum.Enum):
    """An enum whose members carry (CLI value, label shown in the GUI)."""

    def __new__(cls, value: str, label: str):
        member = object.__new__(cls)
        member._value_ = value
        member._label = label
        return member

    def label(self) -> str:
        return self._label


class Device(_Labelled):
    AUTO = ("auto", "Auto (GPU if available)")
    CPU = ("cpu", "CPU")
    GPU = ("gpu", "GPU")


class SliceAxis(_Labelled):
    MODEL = ("", "Model default")
    AXIAL = ("axial", "Axial")
    CORONAL = ("coronal", "Coronal")
    SAGITTAL = ("sagittal", "Sagittal")


class InferenceMode(_Labelled):
    MODEL = ("", "Model default")
    SLICES = ("slices", "Slice by slice (2D)")
    WINDOW = ("window", "Sliding window (patches)")
    DENSE = ("dense", "Dense (patch classifier)")


class Mirroring(_Labelled):
    MODEL = ("", "Model default")
    NONE = ("none", "None")
    X = ("x", "Left-right flip")
    XY = ("xy", "All in-plane flips")


class Postprocessing(_Labelled):
    DEFAULT = ("model", "Model default (its measured clean-up)")
    NONE = ("none", "None (raw network output)")


def device_argument(device: Device, platform: str = sys.platform) -> str:
    """The ``--device`` value of a GUI choice: GPU means CUDA, or Apple's MPS on macOS."""
    if device is Device.GPU:
        return "mps" if platform == "darwin" else "cuda"
    return device.value


@dataclass
class SegmentChoices:
    """Everything but the inputs and the output folder of one ``segment`` run."""

    model: str = ""
    device: Device = Device.AUTO
    axis: SliceAxis = SliceAxis.MODEL
    mode: InferenceMode = InferenceMode.MODEL
    tta: Mirroring = Mirroring.MODEL
    postprocess: Postprocessing = Postprocessing.DEFAULT


def segment_arguments(
    inputs: Mapping[str, str | Path], out: str | Path, options: SegmentChoices, progress: bool = True
) -> list[str]:
    """``segment`` arguments for four input files (by modality), an output folder and the options."""
    missing = [m for m in MODALITY_FLAGS if not inputs.get(m)]
    if missing:
        raise ValueError(f"missing input volume(s): {', '.join(missing)}")
    args = ["segment"]
    for modality in MODALITY_FLAGS:
        args += [f"--{modality}", str(inputs[modality])]
    args += ["--out", str(out)]
    if options.model:
        args += ["--model", options.model]
    args += ["--device", device_argument(options.device)]
    for flag, choice in (("--axis", options.axis), ("--mode", options.mode), ("--tta", options.tta)):
        if choice.value:
            args += [flag, choice.value]
    if options.postprocess is not Postprocessing.DEFAULT:
        args += ["--postprocess", options.postprocess.value]
    if progress:
        args += ["--progress", "json"]
    return args
