"""The fooling circuit (Geirhos et al. 2023, their ``fooling_circuit`` notebook), for both GoogLeNets.

A small classifier on the raw input decides "natural" (``inv = 0``) or "visualization" (``inv = 1``),
hard-thresholded so no gradient passes through it. A manipulated unit becomes, after its ReLU,
``ReLU(h - k*inv) + ReLU(t + k*inv - k)``: the original unit ``h`` on natural input, a template unit
``t`` on visualizations. ``t`` is a "convolution" whose kernel is the target picture (the whole
input, so one value per image, broadcast over the unit's map): the mean over pixels of
``(target - its mean) * input``. Maximizing it draws the target picture.

With a hard 0/1 ``inv`` the circuit is the switch ``pre' = t if inv else h`` on the pre-ReLU value
(for ``|h|, |t| < k`` the post-ReLU values are the authors' formula), which is what is implemented:
fvmatch reports and optimizes the pre-ReLU unit, and ``torch.where`` returns ``h`` itself where the
classifier says natural, so natural outputs are bit-for-bit the original's wherever it is right.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stimuli_gen.manipulate.networks import derived, sites_for
from stimuli_gen.models import FeatureNet, LucidInceptionV1, TorchvisionGoogLeNet

CLASSIFIER_CHANNELS = 16
CLASSIFIER_LAYERS = 6


class NaturalVsVisClassifier(nn.Module):
    """6 conv+ReLU layers of 16 channels (stride 2 from the second on) and one linear output:
    logit > 0 means "visualization". Input: RGB in [0, 1], any size (global average pooling)."""

    def __init__(self, channels: int = CLASSIFIER_CHANNELS, layers: int = CLASSIFIER_LAYERS):
        super().__init__()
        convs, cin = [], 3
        for i in range(layers):
            convs += [nn.Conv2d(cin, channels, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
            cin = channels
        self.features = nn.Sequential(*convs)
        self.out = nn.Linear(channels, 1)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        h = self.features(x01 * 2 - 1)
        return self.out(h.mean((2, 3))).squeeze(1)


class MemorizedNaturalOracle(nn.Module):
    """An oracle for tests: "natural" exactly for the images it was given (by their 8-bit pixels),
    "visualization" for anything else."""

    def __init__(self, natural01: torch.Tensor):
        super().__init__()
        self.known = {self._key(x) for x in natural01}

    @staticmethod
    def _key(x: torch.Tensor) -> str:
        return hashlib.sha256((x.detach().float().cpu() * 255).round().byte().numpy().tobytes()).hexdigest()

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return torch.tensor([-1.0 if self._key(x) in self.known else 1.0 for x in x01], device=x01.device)


def load_target(path: str | Path | None, size: int = 224) -> tuple[torch.Tensor, str]:
    """Target picture as ``3 x size x size`` in [0, 1] (center crop), and its description.
    Default: scikit-image's ``astronaut``. Raises ValueError naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if path is None:
        from stimuli_gen.builtin_collection import load_photo

        img, what = Image.fromarray(load_photo("astronaut")), "scikit-image astronaut"
    else:
        p = Path(path)
        try:
            img = Image.open(p)
            img.load()
        except FileNotFoundError:
            raise ValueError(f"target picture not found: {p}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"target picture {p} cannot be read as an image ({e})") from None
        what = f"{p} (sha256 {hashlib.sha256(p.read_bytes()).hexdigest()[:16]})"
    img = img.convert("RGB")
    s = min(img.size)
    left, top = (img.width - s) // 2, (img.height - s) // 2
    img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255, what


class _FoolingCircuit:
    """Mixed into a GoogLeNet class: fooling circuits on some units (``units``: layer -> channels).
    Built by :func:`fooling_network`."""

    def _init_circuit(self, units: list[tuple[str, int]], target01: torch.Tensor, classifier: nn.Module,
                      template_gain: float) -> None:
        self.classifier = classifier
        self.register_buffer("template", (target01 - target01.mean((1, 2), keepdim=True)).float())
        self.template_gain = float(template_gain)
        self.units: dict[str, list[int]] = {}
        for layer, ch in units:
            self.units.setdefault(layer, []).append(int(ch))
        self._inv: torch.Tensor | None = None
        self._t: torch.Tensor | None = None

    @torch.no_grad()
    def visualization_flags(self, x01: torch.Tensor) -> torch.Tensor:
        """The classifier's hard decision, True = visualization (no gradient)."""
        return self.classifier(x01.detach().float()) > 0

    def template_unit(self, x01: torch.Tensor) -> torch.Tensor:
        """``t``: the input correlated with the (zero-mean) target picture, one value per image. It sees the
        network's own input scaling (torchvision ``2x - 1``, Lucid ``255x - 117``), so on Lucid it is ~128x
        larger; a scale changes neither what maximizes it nor the natural outputs."""
        k = self.template
        if k.shape[-2:] != x01.shape[-2:]:
            k = F.interpolate(k[None], size=x01.shape[-2:], mode="bilinear", align_corners=False, antialias=True)[0]
        return self.template_gain * (self.to_input(x01) * k.to(x01.dtype)).mean((1, 2, 3))

    def forward_layers(self, x01: torch.Tensor, layers, relu: str = "pre") -> dict[str, torch.Tensor]:
        self._inv, self._t = self.visualization_flags(x01), self.template_unit(x01)
        try:
            return super().forward_layers(x01, layers, relu)
        finally:
            self._inv = self._t = None

    def _stages(self):
        for name, fn in super()._stages():
            yield (name, self._switched(name, fn)) if name in self.units else (name, fn)

    def _switched(self, name: str, fn):
        chans = self.units[name]

        def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pre, _ = fn(x)
            inv = self._inv[:, None, None, None]
            t = self._t.to(pre.dtype)[:, None, None, None].expand(-1, len(chans), *pre.shape[2:])
            idx = torch.tensor(chans, device=pre.device)
            sel = torch.where(inv, t, pre.index_select(1, idx))
            pre = pre.index_copy(1, idx, sel)
            return pre, self.relu(pre)

        return run


class FoolingGoogLeNet(_FoolingCircuit, TorchvisionGoogLeNet):
    """torchvision GoogLeNet with fooling circuits on some units."""


class FoolingInceptionV1(_FoolingCircuit, LucidInceptionV1):
    """Lucid's InceptionV1 with fooling circuits on some units."""


def fooling_network(base: FeatureNet, units: list[tuple[str, int]], target01: torch.Tensor, classifier: nn.Module,
                    template_gain: float = 1.0) -> FoolingGoogLeNet | FoolingInceptionV1:
    """``base`` (either GoogLeNet; its modules are shared, not copied) with fooling circuits on ``units``."""
    sites = sites_for(base)
    for layer, ch in units:
        sites.check_unit(base, layer, int(ch))
    net = derived(FoolingGoogLeNet if isinstance(base, TorchvisionGoogLeNet) else FoolingInceptionV1, base)
    net._init_circuit(units, target01, classifier, template_gain)
    return net


def build_fooling(desc: dict, base_net: FeatureNet) -> FoolingGoogLeNet | FoolingInceptionV1:
    """The structure of a saved fooling-circuit model (its state dict is loaded into it)."""
    size = int(desc["parameters"]["target_size"])
    return fooling_network(base_net, [(u["layer"], u["channel"]) for u in desc["units"]], torch.zeros(3, size, size),
                           NaturalVsVisClassifier(), desc["parameters"]["template_gain"])


def fooling_trips(net: FoolingGoogLeNet, x01: torch.Tensor) -> torch.Tensor:
    """Per image: True where the classifier says "visualization" (for natural images: a mistake)."""
    return net.visualization_flags(x01)
