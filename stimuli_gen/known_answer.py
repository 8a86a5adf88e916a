"""Known-answer units: a torchvision GoogLeNet with a few ``inception3a`` channels wired to known filters.

Test support (no I/O): a feature visualization of such a unit must show its filter, and must drive it
harder than any natural image. This is the check that catches a recipe whose diversity term
overwhelms the unit (issue 17: with Lucid's fixed weight 100 the FVs of Gabor units showed the wrong
orientation and stayed below the best natural image).

Wiring (everything else keeps its seeded random weights, eval BatchNorm):

* ``conv1`` output channel ``k`` = the filter (3 x 7 x 7, on the network input ``2x - 1``);
* ``conv2`` channel ``k`` and ``conv3`` channel ``k`` = identity taps of channel ``k`` (1x1, and the
  centre of 3x3), so the filter's ReLU'd, max-pooled response reaches ``maxpool2`` unmixed;
* ``inception3a`` channel ``k`` (its ``branch1`` 1x1 conv) = a tap of that channel;
* the BatchNorms of the wired channels are identities (scale 1, shift 0).

So unit ``inception3a:k`` is (up to two max-pools and ReLUs) the rectified response to filter ``k``.
Its spatial mean has no other input, which is what makes the answer known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

LAYER = "inception3a"
KERNEL = 7


@dataclass(frozen=True)
class KnownUnit:
    channel: int
    kind: str  # "gabor" (luminance) or "colour" (a red-green opponent Gabor)
    orientation_deg: float = 0.0  # direction of the Gabor's wave vector (0 = vertical stripes)
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGB weights of the Gabor (1, -1, 0): red-green opponent


def gabor(orientation_deg: float, wavelength: float = 4.0, sigma: float = 2.5, size: int = KERNEL,
          phase: str = "cos") -> torch.Tensor:
    """Zero-mean, unit-norm cosine (or ``phase="sin"``) Gabor (``size x size``); the wave vector points
    along ``orientation_deg``."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    t = math.radians(orientation_deg)
    u = x * math.cos(t) + y * math.sin(t)
    wave = torch.cos if phase == "cos" else torch.sin
    g = torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2)) * wave(2 * math.pi * u / wavelength)
    g = g - g.mean()
    return (g / g.norm()).float()


def default_units() -> list[KnownUnit]:
    """Four luminance Gabors (0, 45, 90, 135 degrees), channels 0..3, and an isoluminant red-green
    Gabor at 90 degrees (red stripes between green ones), channel 4. An opponent *grating* rather than
    a uniform red-minus-green unit: a uniform colour unit's best natural image is a saturated red
    crop, which a sigmoid-parameterized image reaches only slowly (the grey pad of the transforms
    costs it too), so the unit would test the step count, not what the FV shows."""
    units = [KnownUnit(i, "gabor", orientation_deg=45.0 * i) for i in range(4)]
    units.append(KnownUnit(4, "colour", orientation_deg=90.0, colour=(1.0, -1.0, 0.0)))
    return units


def filter_of(unit: KnownUnit) -> torch.Tensor:
    """The 3 x 7 x 7 conv1 filter of a known unit (unit L2 norm): its Gabor weighted per RGB channel."""
    if unit.kind not in ("gabor", "colour"):
        raise ValueError(f"unknown known-unit kind {unit.kind!r}")
    w = torch.tensor(unit.colour, dtype=torch.float32)[:, None, None] * gabor(unit.orientation_deg)
    return w / w.norm()


def _identity_bn(bn: torch.nn.BatchNorm2d, ch: int) -> None:
    bn.weight[ch], bn.bias[ch], bn.running_mean[ch] = 1.0, 0.0, 0.0
    bn.running_var[ch] = 1.0 - bn.eps


@torch.no_grad()
def wire_known_units(net, units: list[KnownUnit] | None = None) -> list[KnownUnit]:
    """Wire ``units`` into a ``TorchvisionGoogLeNet`` (``stimuli_gen.models``) in place; returns them."""
    units = default_units() if units is None else units
    tv = net.net
    for u in units:
        k = u.channel
        if not 0 <= k < tv.inception3a.branch1.conv.out_channels:
            raise ValueError(f"known unit channel {k} is not in inception3a's 1x1 branch (0..63)")
        tv.conv1.conv.weight[k] = filter_of(u)
        _identity_bn(tv.conv1.bn, k)
        tv.conv2.conv.weight[k] = 0.0
        tv.conv2.conv.weight[k, k] = 1.0
        _identity_bn(tv.conv2.bn, k)
        tv.conv3.conv.weight[k] = 0.0
        tv.conv3.conv.weight[k, k, 1, 1] = 1.0
        _identity_bn(tv.conv3.bn, k)
        tv.inception3a.branch1.conv.weight[k] = 0.0
        tv.inception3a.branch1.conv.weight[k, k] = 1.0
        _identity_bn(tv.inception3a.branch1.bn, k)
    return units


# ---- what a feature visualization shows (pure) -----------------------------------------------------

def dominant_orientation(image01: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Dominant gradient orientation of an image (``3 x H x W`` or ``H x W``) in degrees [0, 180) and
    its coherence in [0, 1] (structure tensor: doubled-angle mean of the luminance gradients).

    For a Gabor the gradients point along its wave vector, so this is comparable to
    ``KnownUnit.orientation_deg`` modulo 180.
    """
    x = torch.as_tensor(image01, dtype=torch.float64)
    if x.dim() == 3:
        x = x.mean(0)
    gy, gx = torch.gradient(x)
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    angle = 0.5 * math.degrees(math.atan2(float(2 * jxy), float(jxx - jyy)))
    coherence = float(torch.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy).clamp_min(1e-12))
    return angle % 180.0, coherence


def oriented_energy(image2d: np.ndarray | torch.Tensor, orientations_deg: tuple[float, ...] = (0.0, 45.0, 90.0, 135.0),
                    wavelength: float = 4.0, sigma: float = 2.5) -> np.ndarray:
    """Mean quadrature (phase-invariant) energy of an ``H x W`` image in the band of the known units'
    Gabors, at each orientation: what a bank of the units' own filters sees. Unlike the structure
    tensor (``dominant_orientation``), it ignores structure at other scales, which a unit built from a
    7x7 Gabor cannot see either."""
    x = torch.as_tensor(image2d, dtype=torch.float64)[None, None]
    x = x - x.mean()
    out = []
    for deg in orientations_deg:
        e = 0.0
        for phase in ("cos", "sin"):
            k = gabor(deg, wavelength, sigma, KERNEL, phase).double()[None, None]
            e = e + torch.nn.functional.conv2d(x, k) ** 2
        out.append(float(e.mean()))
    return np.array(out)


def preferred_orientation(image2d: np.ndarray | torch.Tensor,
                          orientations_deg: tuple[float, ...] = (0.0, 45.0, 90.0, 135.0)) -> float:
    """The orientation (of ``orientations_deg``) with the most energy in the Gabors' band."""
    return float(orientations_deg[int(np.argmax(oriented_energy(image2d, orientations_deg)))])


def chromatic_ratio(image01: np.ndarray | torch.Tensor, colour: tuple[float, float, float],
                    orientation_deg: float) -> float:
    """In the Gabors' band at ``orientation_deg``: the amplitude of the pattern along the chromatic
    direction ``colour`` (e.g. red-green) over that along the other chromatic direction (orthogonal to
    it and to luminance; blue-yellow for red-green). > 1: the FV's colour contrast is the unit's.

    Luminance is left out on purpose: Lucid's recipe (decorrelated colour, Adam's per-coordinate
    steps) puts luminance structure into every FV of a colour unit, with or without diversity
    (measured: red-green/luminance 0.74 at weight 0), so a luminance-free pattern is not what any
    recipe here produces."""
    x = torch.as_tensor(image01, dtype=torch.float64)
    c = np.asarray(colour, dtype=np.float64)
    other = np.cross(c, np.ones(3))
    e_c = oriented_energy(colour_image(x, tuple(c)), (orientation_deg,))[0] / float(c @ c)
    e_o = oriented_energy(colour_image(x, tuple(other)), (orientation_deg,))[0] / float(other @ other)
    return math.sqrt(e_c / max(e_o, 1e-30))


def angle_error(a_deg: float, b_deg: float) -> float:
    """Distance of two orientations modulo 180 degrees (0..90)."""
    d = abs(a_deg - b_deg) % 180.0
    return min(d, 180.0 - d)


def colour_image(image01: np.ndarray | torch.Tensor, colour: tuple[float, float, float]) -> torch.Tensor:
    """The image's RGB channels weighted by ``colour`` (``H x W``; R - G for (1, -1, 0))."""
    x = torch.as_tensor(image01, dtype=torch.float64)
    return torch.einsum("chw,c->hw", x, torch.tensor(colour, dtype=torch.float64))
