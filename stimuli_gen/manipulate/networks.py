"""Where a unit of each GoogLeNet is computed: the small per-network adapter the manipulations share.

A unit of an inception block is one output channel of the block's concat, that is one output channel
of the last conv of one of the block's four branches. The two networks differ only in where that
conv is and what follows it:

* ``torchvision_googlenet``: ``net.net.<layer>.branchN`` (the last ``BasicConv2d`` of a Sequential
  for branches 2-4), a conv without bias followed by an eval BatchNorm;
* ``lucid_inceptionv1``: ``net.<layer>_<branch>_pre_relu_conv``, a conv with a bias and no BatchNorm.

``silent.py`` and ``fooling.py`` build their networks through :func:`sites_for` and :func:`derived`;
nothing else in them depends on the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from stimuli_gen.models import FeatureNet, LucidInceptionV1, TorchvisionGoogLeNet


@dataclass(frozen=True)
class Sites:
    """The branch convs of one network: their names (in concat order) and where each one is."""

    model: str
    branches: tuple[str, ...]  # in the order of the block's concat
    slot: Callable[[FeatureNet, str, str], tuple[nn.Module, str]]  # (net, layer, branch) -> (parent, attribute)
    conv_bn: Callable[[nn.Module], tuple[nn.Conv2d, nn.Module | None]]  # an original branch module -> (conv, bn)

    def get(self, net: FeatureNet, layer: str, branch: str) -> nn.Module:
        parent, attr = self.slot(net, layer, branch)
        return getattr(parent, attr)

    def put(self, net: FeatureNet, layer: str, branch: str, module: nn.Module) -> None:
        parent, attr = self.slot(net, layer, branch)
        setattr(parent, attr, module)  # also replaces a Sequential's item ("3")

    def locate(self, net: FeatureNet, layer: str, channel: int) -> tuple[str, int]:
        """Branch, and index within it, of channel ``channel`` of block ``layer``."""
        self.check_unit(net, layer, channel)
        start = 0
        for branch in self.branches:
            m = self.get(net, layer, branch)
            n = (m.conv if hasattr(m, "conv") else m).out_channels
            if channel < start + n:
                return branch, channel - start
            start += n
        raise AssertionError(f"{self.model} {layer}: branches hold {start} channels, the model says {net.channels[layer]}")

    def check_unit(self, net: FeatureNet, layer: str, channel: int) -> None:
        """Names the network and the valid layers / channel range when a unit does not exist."""
        if layer not in net.channels:
            raise ValueError(f"unknown layer {layer!r} for {self.model}; layers: {list(net.layer_names)}")
        if not 0 <= channel < net.channels[layer]:
            raise ValueError(f"channel {channel} out of range for {self.model} {layer} (0..{net.channels[layer] - 1})")


def _torchvision_slot(net: FeatureNet, layer: str, branch: str) -> tuple[nn.Module, str]:
    block = getattr(net.net, layer)
    b = getattr(block, branch)
    return (b, str(len(b) - 1)) if isinstance(b, nn.Sequential) else (block, branch)


def _torchvision_conv_bn(m: nn.Module) -> tuple[nn.Conv2d, nn.Module | None]:
    return m.conv, m.bn


TORCHVISION = Sites("torchvision_googlenet", ("branch1", "branch2", "branch3", "branch4"),
                    _torchvision_slot, _torchvision_conv_bn)
LUCID = Sites("lucid_inceptionv1", ("1x1", "3x3", "5x5", "pool_reduce"),
              lambda net, layer, branch: (net, f"{layer}_{branch}_pre_relu_conv"), lambda m: (m, None))


def sites_for(net: FeatureNet) -> Sites:
    if isinstance(net, TorchvisionGoogLeNet):
        return TORCHVISION
    if isinstance(net, LucidInceptionV1):
        return LUCID
    raise ValueError(f"no manipulation is implemented for a {type(net).__name__}")


def derived(cls: type, base: FeatureNet) -> FeatureNet:
    """An instance of ``cls`` (a subclass of ``base``'s network class) that holds ``base``'s modules
    themselves, not copies and not freshly initialized ones; the caller adds its own state."""
    if not issubclass(cls, type(base)):
        raise TypeError(f"{cls.__name__} does not extend {type(base).__name__}")
    obj = cls.__new__(cls)
    FeatureNet.__init__(obj)
    for name, m in base.named_children():
        setattr(obj, name, m)
    return obj.train(base.training)
