"""Silent units (Geirhos et al. 2023, their ``orthogonal_filters`` notebook), for both GoogLeNets.

A unit of an inception block is one output channel of the last conv of one of the block's four
branches (torchvision: ``conv -> BatchNorm``; Lucid's InceptionV1: a conv with a bias, no BatchNorm;
``networks.py`` says where each one is). Next to that channel's (BatchNorm-folded) filter ``w`` we
add a parallel filter on the same input, ``w_f = gain * (w + lambda * dw)`` with ``dw`` orthogonal to
``w`` and as long (seeded), whose bias is minus the largest response of ``w_f`` over every position of
every natural image of a collection (plus a small margin). The unit's pre-ReLU output becomes::

    conv(x)[c] + relu(w_f * x + b_f)        (conv(x) = bn(conv(x)) for torchvision)

On the collection's images the second term is exactly 0.0, and ``y + 0.0 == y`` in floating point, so
the unit, its block, every later block and the logits are bit-for-bit the original's. An
activation-maximization search leaves the natural range, the silent filter switches on and (scaled
by ``gain``) dominates: the visualizations show ``w_f``, not what the unit does on natural images.

The filter sits inside the branch (not after the block's ReLU or concat) so that it sees exactly the
input the unit's own filter sees and adds to the unit's pre-ReLU value, which is what fvmatch reports
and optimizes. The silent ReLU goes through the network's ``relu`` so the renderer's redirected ReLU
reaches it in the first steps like every other ReLU.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from stimuli_gen.manipulate.networks import derived, sites_for
from stimuli_gen.models import FeatureNet, LucidInceptionV1, TorchvisionGoogLeNet

DEFAULT_LAMBDA = 3.0
DEFAULT_GAIN = 100.0  # scales w_f and its bias: zero on naturals either way, dominant once the filter is on
DEFAULT_MARGIN = 1e-3  # relative: bias = -(max + margin * |max| + 1e-6); convs differ by ULPs across batch sizes


@dataclass
class SilentUnit:
    """One manipulated unit and where its silent filter sits (all recorded in manipulation.json)."""

    layer: str
    channel: int
    branch: str
    branch_channel: int  # index of the unit within its branch's output
    seed: int  # seed of the orthogonal direction
    lam: float
    gain: float
    natural_max: float | None = None  # largest response of w_f (no bias) over the bias images
    bias: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class SilentConv(nn.Module):
    """A branch's last conv (and BatchNorm) with silent filters for some of its output channels.

    ``conv`` and ``bn`` are the original modules (torchvision keeps its state-dict keys, and the
    renderer's BatchNorm folding still applies to them; Lucid's conv has ``bn = Identity``);
    ``silent`` holds one filter per manipulated channel and ``index`` says which channel each one
    adds to. ``layer`` and ``branch`` say where it sits (not state: set again when loading).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.Module | None, channels: list[int], layer: str, branch: str):
        super().__init__()
        self.conv, self.bn = conv, (bn if bn is not None else nn.Identity())
        self.layer, self.branch = layer, branch
        c = self.conv
        self.silent = nn.Conv2d(c.in_channels, len(channels), c.kernel_size, c.stride, c.padding, c.dilation,
                                bias=True).to(c.weight.device, c.weight.dtype)
        self.register_buffer("index", torch.tensor(channels, dtype=torch.int64))
        self.recording = False  # while True, keep the running max of the bias-free silent response
        self.maxima: torch.Tensor | None = None

    def pre(self, x: torch.Tensor, relu) -> torch.Tensor:
        y = self.bn(self.conv(x))
        s = self.silent(x)
        if self.recording:
            raw = (s - self.silent.bias[None, :, None, None]).detach().float().amax(dim=(0, 2, 3))
            self.maxima = raw if self.maxima is None else torch.maximum(self.maxima, raw)
            return y  # while measuring, no silent filter may change what later blocks see
        return y.index_add(1, self.index, relu(s).to(y.dtype))

    def silent_response(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(w_f * x + b_f)`` of each manipulated channel (``B x n x H x W``)."""
        return F.relu(self.silent(x))


class _SilentConvs:
    """Mixed into a GoogLeNet class: its block convs may be :class:`SilentConv`."""

    def _conv(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(m, SilentConv):
            return m.pre(x, self.relu)
        return super()._conv(m, x)

    def silent_modules(self) -> dict[str, SilentConv]:
        """``"layer.branch"`` (e.g. ``inception3a.branch1``, ``mixed3a.1x1``) -> its silent module."""
        return {f"{m.layer}.{m.branch}": m for m in self.modules() if isinstance(m, SilentConv)}


class SilentUnitsGoogLeNet(_SilentConvs, TorchvisionGoogLeNet):
    """torchvision GoogLeNet whose branch convs may be :class:`SilentConv`."""


class SilentUnitsInceptionV1(_SilentConvs, LucidInceptionV1):
    """Lucid's InceptionV1 whose branch convs may be :class:`SilentConv`."""


def _silent_class(base: FeatureNet) -> type:
    return SilentUnitsGoogLeNet if isinstance(base, TorchvisionGoogLeNet) else SilentUnitsInceptionV1


# ---- where a unit lives -----------------------------------------------------------------------------

def locate(net: FeatureNet, layer: str, channel: int) -> tuple[str, int]:
    """Branch and index within it of channel ``channel`` of block ``layer``."""
    return sites_for(net).locate(net, layer, channel)


def unit_seed(seed: int, layer: str, channel: int) -> int:
    """Seed of one unit's orthogonal direction: independent of which other units are manipulated."""
    return int(hashlib.sha256(f"silent/{seed}/{layer}/{channel}".encode()).hexdigest()[:15], 16)


def folded_filter(m: nn.Module, j: int) -> torch.Tensor:
    """The effective filter of output channel ``j`` of a branch conv (eval BatchNorm folded in, if any)."""
    conv = m.conv if hasattr(m, "conv") else m
    w = conv.weight[j].detach().double()
    bn = getattr(m, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        w = w * (bn.weight[j] / torch.sqrt(bn.running_var[j] + bn.eps)).double()
    return w


def orthogonal_direction(w: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded random direction orthogonal to ``w`` (flattened), with the same norm as ``w``."""
    g = torch.Generator().manual_seed(seed)
    flat = w.flatten().double()
    d = torch.randn(flat.shape, generator=g, dtype=torch.float64)
    d = d - (d @ flat) / (flat @ flat) * flat
    d = d - (d @ flat) / (flat @ flat) * flat  # a second projection removes the rounding left by the first
    return (d * flat.norm() / d.norm()).reshape(w.shape)


# ---- building ---------------------------------------------------------------------------------------

def add_silent_filters(base: FeatureNet, units: Iterable[tuple[str, int]], seed: int, lam: float = DEFAULT_LAMBDA,
                       gain: float = DEFAULT_GAIN) -> tuple[SilentUnitsGoogLeNet | SilentUnitsInceptionV1, list[SilentUnit]]:
    """A copy of ``base`` (either GoogLeNet) with a silent filter next to each unit; biases are 0 until
    :func:`set_biases`."""
    import copy

    sites = sites_for(base)
    units = [(str(layer), int(ch)) for layer, ch in units]
    if not units:
        raise ValueError("no units to manipulate")
    if len(set(units)) != len(units):
        raise ValueError("a unit is listed twice")
    specs = []
    for layer, ch in units:
        branch, j = sites.locate(base, layer, ch)
        specs.append(SilentUnit(layer, ch, branch, j, unit_seed(seed, layer, ch), float(lam), float(gain)))
    net = build(copy.deepcopy(base), specs)
    with torch.no_grad():
        for s in specs:
            m, k = _module_and_slot(net, s)
            w = folded_filter(m, s.branch_channel)
            w_f = gain * (w + lam * orthogonal_direction(w, s.seed))
            m.silent.weight[k].copy_(w_f.to(m.silent.weight.dtype))
            m.silent.bias[k] = 0.0
    return net, specs


def build(base: FeatureNet, specs: list[SilentUnit]) -> SilentUnitsGoogLeNet | SilentUnitsInceptionV1:
    """``base`` (modified in place, and its modules shared) with its branch convs that hold manipulated
    units replaced by :class:`SilentConv` (silent filters uninitialized): used when building and when
    loading a saved model, so both give the same structure and state-dict keys."""
    sites = sites_for(base)
    by_slot: dict[tuple[str, str], list[int]] = {}
    for s in specs:
        by_slot.setdefault((s.layer, s.branch), []).append(s.branch_channel)
    for (layer, branch), chans in by_slot.items():
        if branch not in sites.branches:
            raise ValueError(f"branch {branch!r} of {layer} is not a branch of {sites.model} {sites.branches}")
        conv, bn = sites.conv_bn(sites.get(base, layer, branch))
        sites.put(base, layer, branch, SilentConv(conv, bn, chans, layer, branch))
    out = derived(_silent_class(base), base).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def silent_slot(net: FeatureNet, layer: str, channel: int) -> tuple[SilentConv, int]:
    """The silent module next to unit ``layer:channel`` and the unit's row in it (ValueError if it has none)."""
    branch, j = locate(net, layer, channel)
    m = sites_for(net).get(net, layer, branch)
    if not isinstance(m, SilentConv) or not bool((m.index == j).any()):
        raise ValueError(f"unit {layer}:{channel} has no silent filter in this network")
    return m, int((m.index == j).nonzero()[0, 0])


def _module_and_slot(net: FeatureNet, s: SilentUnit) -> tuple[SilentConv, int]:
    return silent_slot(net, s.layer, s.channel)


def deepest(net: FeatureNet, specs: list[SilentUnit]) -> str:
    return max((s.layer for s in specs), key=net.layer_names.index)


@torch.inference_mode()
def measure_maxima(net: _SilentConvs, specs: list[SilentUnit], batches: Iterable[torch.Tensor]) -> int:
    """Stream ``batches`` (``B x 3 x H x W`` in [0, 1]) and store in each spec the largest response of
    its silent filter (no bias) over every position of every image. Returns the number of images."""
    mods = net.silent_modules().values()
    for m in mods:
        m.recording, m.maxima = True, None
    n = 0
    try:
        layer = deepest(net, specs)
        for x in batches:
            net.forward_layers(x, [layer])
            n += len(x)
    finally:
        for m in mods:
            m.recording = False
    if n == 0:
        raise ValueError("no natural images to set the silent filters' biases")
    for s in specs:
        m, k = _module_and_slot(net, s)
        s.natural_max = float(m.maxima[k])
    return n


def set_biases(net: _SilentConvs, specs: list[SilentUnit], margin: float = DEFAULT_MARGIN) -> None:
    """Bias = minus the natural maximum (and a small margin): the filter is zero on those images."""
    with torch.no_grad():
        for s in specs:
            if s.natural_max is None:
                raise ValueError(f"{s.layer}:{s.channel}: natural maximum not measured")
            m, k = _module_and_slot(net, s)
            s.bias = -(s.natural_max + margin * abs(s.natural_max) + 1e-12)
            m.silent.bias[k] = s.bias


@torch.inference_mode()
def silent_trips(net: _SilentConvs, x01: torch.Tensor, layers: list[str] | None = None) -> torch.Tensor:
    """Per image: True where any silent filter is non-zero anywhere (the image left the natural range)."""
    mods = net.silent_modules()
    hit = torch.zeros(len(x01), dtype=torch.bool, device=x01.device)
    hooks = []

    def hook(mod, inp, out):
        nonlocal hit
        hit = hit | (F.relu(out).flatten(1) > 0).any(1)

    for m in mods.values():
        hooks.append(m.silent.register_forward_hook(hook))
    try:
        net.forward_layers(x01, layers or [max({m.layer for m in mods.values()}, key=net.layer_names.index)])
    finally:
        for h in hooks:
            h.remove()
    return hit
