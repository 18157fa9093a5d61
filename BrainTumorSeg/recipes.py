"""Training recipes: how each architecture trains, and the default model-card template of each.

A recipe is the ``training`` block of a model-card template (``training/*.json``); command-line
flags override it, and the finished card records the recipe actually used. The architecture decides
the sampler, because it decides how the network runs at inference:

- 2D slice networks (U-Net, FC-DenseNet, PSPNet): ``slices`` (crops of whole slices, 2.5D context).
- Havaei et al. 2017 (arXiv:1505.03540) patch classifiers (TwoPathCNN and the cascades): ``patches``
  labelled by their centre pixel, trained in the paper's two phases (phase 1 on patches in which all
  labels are equally likely, phase 2 only the output layer on the natural label distribution), SGD
  with momentum rising from 0.5 to 0.9, L1 + L2 and max-norm; evaluated densely (``inference.mode``
  ``dense``). Or ``slices`` for the Keras reimplementation's variant (batch normalization instead of
  dropout, every pixel of a slice trained at once with a per-slice class-weighted loss, one phase).
- 3D SegResNet (Myronenko 2018, arXiv:1810.11654): ``blocks`` of the volume, sliding-window inference.

Classes of the Havaei networks: BRATS 2013, the paper's data, had 5 labels (necrosis, edema,
non-enhancing, enhancing, background); BraTS 2017-2021 (and the shared BraTS 2018 cases) merge
necrosis and non-enhancing tumor into one label, so the networks here have 4 outputs, one per
internal label 0 background, 1 NCR/NET, 2 edema, 3 enhancing (``outputs.labels`` ``[0, 1, 2, 3]``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SAMPLERS = ("slices", "patches", "blocks")
HAVAEI = ("twopathcnn", "inputcascadecnn", "localcascadecnn", "mfcascadecnn")
CASCADES = HAVAEI[1:]


@dataclass
class Recipe:
    """Everything about a training run that is not the network: sampler, sizes, steps, loss, optimizer, phases.

    ``steps`` counts phase 1 (or the only phase); ``phase2_steps`` then retrain only the output layer
    on the natural label distribution (Havaei's phase 2; patches only). ``momentum`` is a start and end
    value, ramped linearly over phase 1 (SGD only). ``l1`` and ``max_norm`` are Havaei's regularizers
    (0 / None: off); ``weight_decay`` is the L2 term. ``rotate_blocks`` adds the slices' rotation and scale
    (:func:`augmentation.rotate_scale_blocks`) to the flips and intensity changes of augmented 3D blocks.
    """

    sampler: str = "slices"
    steps: int = 2000
    phase2_steps: int = 0
    batch: int = 16
    crop: list[int] = field(default_factory=lambda: [160, 192])
    block: list[int] = field(default_factory=lambda: [96, 96, 96])
    block_ratios: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    tumor_fraction: float = 0.7
    balance: str = "uniform"
    loss: str = "dice-ce"
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: list[float] = field(default_factory=lambda: [0.9, 0.9])
    weight_decay: float = 1e-4
    l1: float = 0.0
    max_norm: float | None = None
    augment: bool = True
    rotate_blocks: bool = False
    validate_every: int = 500
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Recipe:
        """A recipe from a card's ``training`` block; keys that are not recipe fields (history, command, ...) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: copy.deepcopy(v) for k, v in raw.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The fields that matter for this recipe's sampler (a patch recipe has no crop size, a slice recipe no phases)."""
        unused = {
            "slices": ("block", "block_ratios", "balance", "phase2_steps", "rotate_blocks"),
            "patches": ("crop", "block", "block_ratios", "tumor_fraction", "rotate_blocks"),
            "blocks": ("crop", "tumor_fraction", "balance", "phase2_steps"),
        }.get(self.sampler, ())
        return {k: v for k, v in asdict(self).items() if k not in unused}

    def check(self, architecture: str, output_type: str) -> None:
        """ValueError when the recipe cannot train ``architecture`` (e.g. patches for a slice network)."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose {', '.join(SAMPLERS)}")
        if self.sampler == "patches" and architecture not in HAVAEI:
            raise ValueError(f"{architecture} is not a patch classifier; train it on slices")
        if self.sampler == "patches" and output_type != "classes":
            raise ValueError("patch classifiers need class outputs (outputs.type classes)")
        if (self.sampler == "blocks") != (architecture == "segresnet"):
            raise ValueError("3D blocks are for the 3D network (segresnet) and it trains on blocks only")
        if self.rotate_blocks and (self.sampler != "blocks" or not self.augment):
            raise ValueError("rotating blocks is an augmentation of 3D blocks (slices and patches rotate whenever augmented)")
        if self.phase2_steps and self.sampler != "patches":
            raise ValueError("phase 2 (output layer on the natural label distribution) is for patch training")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adamw or sgd")


_MODALITIES = ["t1", "t1ce", "t2", "flair"]
_NORMALIZATION = (
    "brain mask = any sequence non-zero; crop to the mask's bounding box + 2 voxels;"
    " per-sequence z-score inside the mask, 0 outside"
)
_REGIONS = {"type": "regions", "channels": ["WT", "TC", "ET"], "threshold": 0.5}
_CLASSES = {"type": "classes", "labels": [0, 1, 2, 3]}


def _inputs(context: int) -> dict[str, Any]:
    order = "slice offset (-1, 0, +1) then sequence (t1, t1ce, t2, flair)" if context else "sequence (t1, t1ce, t2, flair)"
    return {
        "modalities": list(_MODALITIES),
        "context_slices": context,
        "normalization": _NORMALIZATION,
        "orientation": f"canonical RAS; channel order: {order}",
    }


def _havaei(architecture: str, title: str, patch: int, batch: int, steps: int, phase2: int) -> dict[str, Any]:
    config: dict[str, Any] = {"in_channels": 4, "num_classes": 4, "maxout_k": 2, "dropout": 0.2, "batch_norm": False}
    config |= {"local_maps": 64, "global_maps": 160}
    note = ""
    if architecture in CASCADES:
        config["freeze_first"] = True
        note = " The first CNN is a trained TwoPathCNN (--first-cnn), kept fixed, as in the paper."
    return {
        "id": f"{architecture}-axial",
        "name": f"{title} (Havaei et al. 2017), axial {patch}x{patch} patches, 4 classes",
        "description": (
            f"{title} of Havaei et al., Medical Image Analysis 2017 (arXiv:1505.03540), the paper's layers, Maxout K = 2 and"
            " dropout 0.2, trained in the paper's two phases (labels equally likely, then the output layer alone on the natural"
            " label distribution) and evaluated densely on whole axial slices. Differs from the paper: 4 classes instead of 5"
            " (BraTS 2018 merges necrosis and non-enhancing tumor), far fewer training steps (CPU), cosine learning-rate decay"
            " instead of per-epoch decay; dropout rate, L1/L2 and max-norm values are not stated in the paper and chosen"
            f" here.{note}"
        ),
        "architecture": architecture,
        "config": config,
        "inputs": _inputs(0),
        "outputs": copy.deepcopy(_CLASSES),
        "inference": {"mode": "dense", "axis": "axial", "batch_size": 2},
        "training": Recipe(
            sampler="patches",
            steps=steps,
            phase2_steps=phase2,
            batch=batch,
            balance="uniform",
            loss="ce",
            optimizer="sgd",
            lr=0.005,
            momentum=[0.5, 0.9],
            weight_decay=1e-4,
            l1=1e-6,
            max_norm=4.0,
            validate_every=steps,
        ).to_dict(),
    }


def _slices(model_id: str, architecture: str, name: str, description: str, config: dict[str, Any], recipe: Recipe) -> dict:
    return {
        "id": model_id,
        "name": name,
        "description": description,
        "architecture": architecture,
        "config": config,
        "inputs": _inputs(1),
        "outputs": copy.deepcopy(_REGIONS),
        "inference": {"mode": "slices", "axis": "axial", "batch_size": 16},
        "training": recipe.to_dict(),
    }


TEMPLATES: dict[str, dict[str, Any]] = {
    "unet2d": _slices(
        "unet2d-axial",
        "unet2d",
        "2D U-Net, axial slices (2.5D), WT/TC/ET regions",
        "U-Net (Ronneberger 2015) applied to axial slices with one neighbouring slice on each side as extra input channels;"
        " predicts the BraTS regions WT, TC and ET as overlapping sigmoid outputs.",
        {"in_channels": 12, "out_channels": 3, "features": [16, 32, 64, 128, 256], "dropout": 0.1},
        Recipe(steps=2000, batch=16, crop=[160, 192], validate_every=400),
    ),
    "fcdensenet": _slices(
        "fcdensenet-axial",
        "fcdensenet",
        'FC-DenseNet "Tiramisu" (CPU-sized), axial slices (2.5D), WT/TC/ET regions',
        'FC-DenseNet (Jegou et al. 2017, "Tiramisu") applied to axial slices with one neighbouring slice on each side as extra'
        " input channels; predicts the BraTS regions WT, TC and ET as overlapping sigmoid outputs. CPU-sized: 4 dense blocks"
        " of 3 layers down and up, growth 8, bottleneck 3, first convolution 24 (0.25 M parameters) instead of the seed's"
        " variant or FC-DenseNet56/103, whose full-resolution dense blocks cost 22 s per training step of 16 slices on 2 cores.",
        {
            "in_channels": 12,
            "out_channels": 3,
            "growth_rate": 8,
            "down_blocks": [3, 3, 3, 3],
            "bottleneck": 3,
            "first_conv": 24,
            "dropout": 0.2,
        },
        Recipe(steps=2400, batch=8, crop=[128, 128], validate_every=600),
    ),
    "pspnet": _slices(
        "pspnet-axial",
        "pspnet",
        "PSPNet, axial slices (2.5D), WT/TC/ET regions",
        "PSPNet (Zhao et al. 2017) with a small residual backbone (width 32, blocks 2-2-2-2, pyramid bins 1, 2, 3, 6) applied"
        " to axial slices with one neighbouring slice on each side; predicts WT, TC and ET as overlapping sigmoid outputs."
        " A CPU-sized backbone trained from scratch instead of the paper's ImageNet ResNet.",
        {"in_channels": 12, "out_channels": 3, "width": 32, "dropout": 0.1},
        Recipe(steps=2000, batch=16, crop=[160, 192], validate_every=400),
    ),
    "twopathcnn": _havaei("twopathcnn", "TwoPathCNN", 33, 128, 3000, 500),
    "inputcascadecnn": _havaei("inputcascadecnn", "InputCascadeCNN", 65, 64, 2000, 300),
    "localcascadecnn": _havaei("localcascadecnn", "LocalCascadeCNN", 56, 64, 2000, 300),
    "mfcascadecnn": _havaei("mfcascadecnn", "MFCascadeCNN", 53, 64, 2000, 300),
    "segresnet": {
        "id": "segresnet-3d",
        "name": "3D SegResNet (MONAI), 64^3 blocks, WT/TC/ET regions",
        "description": (
            "SegResNet (Myronenko, BrainLes 2018, arXiv:1810.11654; MONAI's implementation, without the VAE branch) on 3D"
            " blocks, sliding-window inference with overlap 0.5; WT, TC and ET as sigmoid outputs. CPU-sized: MONAI's 16"
            " initial filters, but 64^3 blocks and 3000 steps instead of MONAI's BraTS recipe (224x224x144 crops, 300"
            " epochs on a GPU)."
        ),
        "architecture": "segresnet",
        "config": {
            "in_channels": 4,
            "out_channels": 3,
            "init_filters": 16,
            "blocks_down": [1, 2, 2, 4],
            "blocks_up": [1, 1, 1],
            "dropout_prob": 0.2,
        },
        "inputs": _inputs(0),
        "outputs": copy.deepcopy(_REGIONS),
        "inference": {"mode": "window", "spatial_dims": 3, "window": [64, 64, 64], "overlap": 0.5, "batch_size": 2},
        "training": Recipe(sampler="blocks", steps=3000, batch=2, block=[64, 64, 64], lr=1e-3, validate_every=750).to_dict(),
    },
}


def default_template(architecture: str) -> dict[str, Any]:
    """A copy of the default model-card template (with its recipe in ``training``) of ``architecture``."""
    if architecture not in TEMPLATES:
        raise ValueError(f"unknown architecture {architecture!r}; choose {', '.join(TEMPLATES)}")
    return copy.deepcopy(TEMPLATES[architecture])


def keras_variant(template: dict[str, Any]) -> dict[str, Any]:
    """The Keras reimplementation's variant of a Havaei template: batch normalization instead of dropout, dense training on
    whole-slice crops with a per-slice class-weighted cross-entropy, one phase."""
    out = copy.deepcopy(template)
    out["id"] = out["id"].replace("-axial", "-keras-axial")
    out["name"] = out["name"].split(",")[0] + ", Keras variant (batch normalization, per-slice class-weighted loss), 4 classes"
    out["description"] = (
        out["description"].split(",")[0] + ", the paper's layers and Maxout, as a Keras reimplementation trains it:"
        " batch normalization after every hidden convolution instead of dropout, one phase of dense training on"
        " whole-slice crops (each crop cut with the network's patch margin around it, so every scored pixel sees real"
        " context) with a cross-entropy weighted per slice by inverse class frequency, AdamW. Evaluated densely on"
        " whole axial slices; 4 classes (BraTS 2018 merges necrosis and non-enhancing tumor)."
    )
    out["config"] |= {"batch_norm": True, "dropout": 0.0}
    recipe = Recipe.from_dict(out["training"])
    recipe.sampler, recipe.phase2_steps, recipe.loss, recipe.batch, recipe.crop = "slices", 0, "weighted-ce", 4, [96, 96]
    recipe.optimizer, recipe.lr, recipe.momentum, recipe.l1, recipe.max_norm = "adamw", 1e-3, [0.9, 0.9], 0.0, None
    recipe.tumor_fraction, recipe.validate_every = 0.7, recipe.steps
    out["training"] = recipe.to_dict()
    return out
