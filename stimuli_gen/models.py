"""The two GoogLeNets, wrapped so that one forward pass returns the activations of chosen layers.

* ``torchvision_googlenet``: torchvision's GoogLeNet (BatchNorm, 1000 classes), layers
  ``inception3a`` ... ``inception5b``.
* ``lucid_inceptionv1``: Lucid's InceptionV1 ("inception5h", no BatchNorm, 1008 classes), the network
  of the earlier human studies, with modules named as in Lucent's ``inception5h.pth`` so that file
  loads as it is; layers ``mixed3a`` ... ``mixed5b``.

Both take RGB images in [0, 1] (``B x 3 x H x W``) and do their own input scaling. ``forward_layers``
stops after the deepest requested layer (up to 2.6x less work for early layers) and returns the
channel concat of each layer before or after the ReLU. Every ReLU goes through ``self.relu`` so the
feature-visualization code can swap in a gradient-redirecting ReLU; no ReLU is in place, so a
captured pre-ReLU tensor is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from contracts.common import sha256_file

MODEL_NAMES = ("torchvision_googlenet", "lucid_inceptionv1")
RELU_MODES = ("pre", "post")

# Documented default layer groups (overridable in the generator's config).
DEFAULT_LAYER_GROUPS = {
    "torchvision_googlenet": {
        "early": ["inception3a", "inception3b"],
        "middle": ["inception4a", "inception4b", "inception4c"],
        "late": ["inception4d", "inception4e", "inception5a", "inception5b"],
    },
    "lucid_inceptionv1": {
        "early": ["mixed3a", "mixed3b"],
        "middle": ["mixed4a", "mixed4b", "mixed4c"],
        "late": ["mixed4d", "mixed4e", "mixed5a", "mixed5b"],
    },
}

TORCHVISION_WEIGHTS_FILE = "googlenet-1378be20.pth"


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be loaded; the message says how to fix it."""


class FeatureNet(nn.Module):
    """Common interface: ordered layer names, channel counts, and a truncating forward."""

    layer_names: tuple[str, ...] = ()
    channels: dict[str, int] = {}

    def __init__(self) -> None:
        super().__init__()
        self.relu: Callable[[torch.Tensor], torch.Tensor] = F.relu

    def to_input(self, x01: torch.Tensor) -> torch.Tensor:
        """Scale [0, 1] RGB to what the network was trained on."""
        raise NotImplementedError

    def _stages(self):
        """Yield ``(layer_name or None, fn)``; fn maps the running tensor to ``(pre, post)`` for
        named layers, or to the next tensor for unnamed stages."""
        raise NotImplementedError

    def forward_layers(self, x01: torch.Tensor, layers: Iterable[str], relu: str = "pre") -> dict[str, torch.Tensor]:
        """Activations ``B x C x H x W`` of ``layers``, running the network only as far as needed."""
        wanted = set(layers)
        unknown = wanted - set(self.layer_names)
        if unknown:
            raise KeyError(f"unknown layer(s) {sorted(unknown)}; this model has {list(self.layer_names)}")
        if relu not in RELU_MODES:
            raise ValueError(f"relu must be one of {RELU_MODES}, got {relu!r}")
        out: dict[str, torch.Tensor] = {}
        h = self.to_input(x01)
        for name, fn in self._stages():
            if not wanted - out.keys():
                break
            if name is None:
                h = fn(h)
                continue
            pre, h = fn(h)
            if name in wanted:
                out[name] = pre if relu == "pre" else h
        return out

    @contextlib.contextmanager
    def relu_replaced(self, relu: Callable[[torch.Tensor], torch.Tensor]):
        """Temporarily route every ReLU through ``relu`` (e.g. a gradient-redirecting one)."""
        old, self.relu = self.relu, relu
        try:
            yield self
        finally:
            self.relu = old


# ---- torchvision GoogLeNet ----------------------------------------------------------------------

class TorchvisionGoogLeNet(FeatureNet):
    layer_names = ("inception3a", "inception3b", "inception4a", "inception4b", "inception4c",
                   "inception4d", "inception4e", "inception5a", "inception5b")
    channels = dict(zip(layer_names, (256, 480, 512, 512, 512, 528, 832, 832, 1024)))
    n_classes = 1000

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def to_input(self, x01: torch.Tensor) -> torch.Tensor:
        # torchvision's pretrained GoogLeNet has transform_input=True, which turns ImageNet-normalised
        # input into (x - 0.5) / 0.5; we feed that directly and build the net with transform_input=False.
        return x01 * 2.0 - 1.0

    def _conv(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Pre-ReLU output of a BasicConv2d (conv, bn)."""
        return m.bn(m.conv(x))

    def _inception(self, block: nn.Module):
        def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pres = []
            for branch in (block.branch1, block.branch2, block.branch3, block.branch4):
                mods = list(branch) if isinstance(branch, nn.Sequential) else [branch]
                h = x
                for m in mods[:-1]:
                    h = self.relu(self._conv(m, h)) if hasattr(m, "bn") else m(h)
                pres.append(self._conv(mods[-1], h))
            pre = torch.cat(pres, 1)
            return pre, self.relu(pre)

        return run

    def _stages(self):
        n = self.net
        yield None, lambda x: n.maxpool1(self.relu(self._conv(n.conv1, x)))
        yield None, lambda x: n.maxpool2(self.relu(self._conv(n.conv3, self.relu(self._conv(n.conv2, x)))))
        yield "inception3a", self._inception(n.inception3a)
        yield "inception3b", self._inception(n.inception3b)
        yield None, n.maxpool3
        for name in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
            yield name, self._inception(getattr(n, name))
        yield None, n.maxpool4
        yield "inception5a", self._inception(n.inception5a)
        yield "inception5b", self._inception(n.inception5b)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Class logits (1000)."""
        h = self.forward_layers(x01, ["inception5b"], relu="post")["inception5b"]
        return self.net.fc(torch.flatten(self.net.avgpool(h), 1))


def _torchvision_skeleton() -> nn.Module:
    from torchvision.models import googlenet

    net = googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=True)
    return net.eval()


# ---- Lucid InceptionV1 --------------------------------------------------------------------------

# in_channels, then branch widths: 1x1, 3x3 bottleneck, 3x3, 5x5 bottleneck, 5x5, pool reduce.
LUCID_BLOCKS = {
    "mixed3a": (192, 64, 96, 128, 16, 32, 32),
    "mixed3b": (256, 128, 128, 192, 32, 96, 64),
    "mixed4a": (480, 192, 96, 204, 16, 48, 64),
    "mixed4b": (508, 160, 112, 224, 24, 64, 64),
    "mixed4c": (512, 128, 128, 256, 24, 64, 64),
    "mixed4d": (512, 112, 144, 288, 32, 64, 64),
    "mixed4e": (528, 256, 160, 320, 32, 128, 128),
    "mixed5a": (832, 256, 160, 320, 48, 128, 128),
    "mixed5b": (832, 384, 192, 384, 48, 128, 128),
}


class LucidInceptionV1(FeatureNet):
    """Lucid's InceptionV1 (TF 'inception5h'), module names as in Lucent's ``inception5h.pth``."""

    layer_names = tuple(LUCID_BLOCKS)
    channels = {k: v[1] + v[3] + v[5] + v[6] for k, v in LUCID_BLOCKS.items()}
    n_classes = 1008

    def __init__(self) -> None:
        super().__init__()
        self.conv2d0_pre_relu_conv = nn.Conv2d(3, 64, 7, stride=2)
        self.conv2d1_pre_relu_conv = nn.Conv2d(64, 64, 1)
        self.conv2d2_pre_relu_conv = nn.Conv2d(64, 192, 3)
        for name, (cin, c1, c3r, c3, c5r, c5, cp) in LUCID_BLOCKS.items():
            for suffix, ci, co, k in (("1x1", cin, c1, 1), ("3x3_bottleneck", cin, c3r, 1), ("3x3", c3r, c3, 3),
                                      ("5x5_bottleneck", cin, c5r, 1), ("5x5", c5r, c5, 5), ("pool_reduce", cin, cp, 1)):
                setattr(self, f"{name}_{suffix}_pre_relu_conv", nn.Conv2d(ci, co, k, padding=k // 2))
        self.softmax2_pre_activation_matmul = nn.Linear(1024, self.n_classes)

    def to_input(self, x01: torch.Tensor) -> torch.Tensor:
        return x01 * 255.0 - 117.0  # the TF graph's input range, -117..138

    @staticmethod
    def _tf_maxpool_s2(x: torch.Tensor) -> torch.Tensor:
        # TF 'SAME' 3x3/2 pooling on even sizes pads one row/column at the end only.
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, stride=2)

    def _lrn(self, x: torch.Tensor) -> torch.Tensor:
        return F.local_response_norm(x, size=9, alpha=9.99999974738e-05, beta=0.5, k=1)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv2d0_pre_relu_conv(F.pad(x, (2, 3, 2, 3))))
        h = self._lrn(self._tf_maxpool_s2(h))
        h = self.relu(self.conv2d1_pre_relu_conv(h))
        h = self._lrn(self.relu(self.conv2d2_pre_relu_conv(F.pad(h, (1, 1, 1, 1)))))
        return self._tf_maxpool_s2(h)

    def _conv(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Pre-ReLU output of a block's conv (a hook, as torchvision's ``_conv``: manipulated networks
        put their own modules there)."""
        return m(x)

    def _block(self, name: str):
        conv = lambda suffix, x: self._conv(getattr(self, f"{name}_{suffix}_pre_relu_conv"), x)  # noqa: E731

        def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            b1 = conv("1x1", x)
            b3 = conv("3x3", self.relu(conv("3x3_bottleneck", x)))
            b5 = conv("5x5", self.relu(conv("5x5_bottleneck", x)))
            bp = conv("pool_reduce", F.max_pool2d(x, 3, stride=1, padding=1))
            pre = torch.cat([b1, b3, b5, bp], 1)
            return pre, self.relu(pre)

        return run

    def _stages(self):
        yield None, self._stem
        for name in self.layer_names:
            yield name, self._block(name)
            if name in ("mixed3b", "mixed4e"):
                yield None, self._tf_maxpool_s2

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Class logits (1008; the first is a dummy class)."""
        h = self.forward_layers(x01, ["mixed5b"], relu="post")["mixed5b"]
        return self.softmax2_pre_activation_matmul(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


# ---- loading --------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A frozen, eval-mode network plus the identity of its weights, as recorded in the manifest."""

    name: str
    net: FeatureNet
    weights: dict  # {"source": pretrained|file|random, "identity", "sha256", "seed"}
    layer_groups: dict[str, list[str]] = field(default_factory=dict)

    @property
    def random_weights(self) -> bool:
        return self.weights["source"] == "random"

    def check_units(self, units: Iterable[tuple[str, int]]) -> None:
        """Fail before any work when a layer is unknown or a channel is out of range."""
        for layer, channel in units:
            if layer not in self.net.channels:
                raise ValueError(f"unknown layer {layer!r} for {self.name}; layers: {list(self.net.layer_names)}")
            if not 0 <= int(channel) < self.net.channels[layer]:
                raise ValueError(f"channel {channel} out of range for {self.name} {layer} "
                                 f"(0..{self.net.channels[layer] - 1})")


RANDOM_WEIGHTS_WARNING = ("RANDOM WEIGHTS: the network is untrained. Units, exemplars and "
                          "feature visualizations made with it are meaningless for a study; use them only for tests "
                          "and dry runs.")


def load_model(name: str = "torchvision_googlenet", weights: str = "pretrained", seed: int = 0,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Build a model and load its weights.

    ``weights``: ``"pretrained"`` (torchvision's GoogLeNet_Weights.IMAGENET1K_V1 through torchvision's
    cache), a path to a local state dict, or ``"random"`` (seeded init, for tests and dry runs; warns).
    Lucid's InceptionV1 has no download: pass the path of Lucent's ``inception5h.pth``.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = TorchvisionGoogLeNet(_torchvision_skeleton()) if name == "torchvision_googlenet" else LucidInceptionV1()
        info = {"source": "random", "identity": f"random init, seed {seed}", "sha256": None, "seed": seed}
        warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=2)
    elif weights == "pretrained":
        if name != "torchvision_googlenet":
            raise WeightsUnavailable(
                "lucid_inceptionv1 has no download here: pass --weights PATH to Lucent's inception5h.pth")
        state, path = _torchvision_pretrained_state()
        net = TorchvisionGoogLeNet(_load_torchvision_state(state, path))
        info = {"source": "pretrained", "identity": "torchvision GoogLeNet_Weights.IMAGENET1K_V1",
                "sha256": sha256_file(path), "seed": None, "path": str(path)}
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailable(f"weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if name == "torchvision_googlenet":
            net = TorchvisionGoogLeNet(_load_torchvision_state(state, path))
        else:
            net = LucidInceptionV1()
            _load_strict(net, {k: v for k, v in state.items() if k in net.state_dict() or not _is_aux(k)}, path)
        info = {"source": "file", "identity": str(path.resolve()), "sha256": sha256_file(path), "seed": None}
    net = net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)  # frozen: backward computes input gradients only
    return LoadedModel(name=name, net=net, weights=info, layer_groups={k: list(v) for k, v in DEFAULT_LAYER_GROUPS[name].items()})


def _is_aux(key: str) -> bool:
    # Auxiliary classifier heads of either network; not needed for unit activations.
    return key.startswith(("aux1.", "aux2.", "head0", "head1", "nn0", "nn1", "softmax0", "softmax1"))


def _load_strict(module: nn.Module, state: dict, path: os.PathLike | str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsUnavailable(
            f"{path}: not a state dict for this model (missing {len(missing)} keys, e.g. {missing[:3]}; "
            f"unexpected {len(unexpected)}, e.g. {unexpected[:3]})")


def _load_torchvision_state(state: dict, path: os.PathLike | str) -> nn.Module:
    net = _torchvision_skeleton()
    _load_strict(net, {k: v for k, v in state.items() if not _is_aux(k)}, path)
    return net


def _torchvision_pretrained_state() -> tuple[dict, Path]:
    from torchvision.models import GoogLeNet_Weights

    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS_FILE
    try:
        state = GoogLeNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # offline, proxy, corrupt cache: all end the same way for the user
        raise WeightsUnavailable(
            f"could not load torchvision's pretrained GoogLeNet weights ({type(e).__name__}: {e}).\n"
            f"  Either put {TORCHVISION_WEIGHTS_FILE} (from {GoogLeNet_Weights.IMAGENET1K_V1.url}) at {path}\n"
            f"  (torchvision's cache; TORCH_HOME changes it), or pass --weights PATH to a local state dict,\n"
            f"  or --weights random for a dry run with an untrained network.") from e
    return state, path


def channel_statistic(acts: torch.Tensor, statistic: str = "mean") -> torch.Tensor:
    """Per-channel unit activation ``B x C`` from maps ``B x C x H x W``: spatial mean or max."""
    if statistic == "mean":
        return acts.mean(dim=(2, 3))
    if statistic == "max":
        return acts.amax(dim=(2, 3))
    raise ValueError(f"statistic must be 'mean' or 'max', got {statistic!r}")
