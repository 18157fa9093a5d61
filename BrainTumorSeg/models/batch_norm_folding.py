"""Fold each batch normalization into the convolution just before it, for inference.

Once trained, batch normalization (Ioffe & Szegedy 2015) is a fixed per-channel scale and shift, so a
convolution followed by it is one convolution with rescaled weights and a bias: the same function in one
pass over memory instead of two. Only ``Conv -> BatchNorm`` pairs that are adjacent children of an
``nn.Sequential`` are folded (the post-activation blocks of U-Net, PSPNet and the Keras Havaei variant);
pre-activation blocks (``BatchNorm -> ReLU -> Conv``, as in FC-DenseNet) are left as they are.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

_PAIRS = ((nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def fold_batch_norms(network: nn.Module) -> int:
    """Fold in place every ``Conv -> BatchNorm`` pair of an eval-mode ``network``; returns how many were folded."""
    if network.training:
        raise ValueError("batch normalization can be folded only in eval mode (its statistics must be fixed)")
    folded = 0
    for sequence in [m for m in network.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequence._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = sequence._modules[first], sequence._modules[second]
            if any(type(conv) is c and type(norm) is b for c, b in _PAIRS) and norm.track_running_stats:
                # The convolution itself takes the folded weights (torch's fuse_conv_bn_eval deep-copies it first).
                conv.weight, conv.bias = fuse_conv_bn_weights(
                    conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
                )
                setattr(sequence, second, nn.Identity())
                folded += 1
    return folded
