"""BrainTumorSeg: glioma sub-region segmentation in four-sequence brain MRI, without Slicer.

The package never imports slicer, qt, ctk or vtk; the 3D Slicer module
(`BrainTumorSegmentation.py` at the repository root) drives it through the CLI.
"""

__version__ = "0.1.0"
