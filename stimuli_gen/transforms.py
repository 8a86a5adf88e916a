"""Transformation robustness, one random transform per image, folded into one affine grid.

Lucid applies, each step, ``pad(p, 0.5) -> jitter(j1) -> random_scale -> random_rotate -> jitter(j2)``
as separate ops whose output size varies with the drawn scale, and draws one transform for the whole
batch. Here every image draws its own transform from its own generator (so a unit's images do not
depend on the other units in the batch), and the chain is composed into a single affine map sampled
with one ``grid_sample`` at a fixed output size (static shapes for ``torch.compile`` / CUDA graphs):

* jitter crops ``size - j`` pixels at an integer offset uniform in ``0..j`` (``tf.random_crop``);
* scale and rotation act about the image centre; outside the image everything reads the pad value
  (Lucid's rotation fills 0; 0.5 everywhere is the choice that keeps the border uniform);
* the output covers ``T = size + 2*pad - j1 - j2`` canvas pixels at scale 1 (Lucid's output size
  at scale 1) and ``T / scale`` pixels at other scales, sampled on an ``out_size`` grid
  (``out_size = T`` by default, i.e. one output pixel per canvas pixel at scale 1).

Draws for all steps are made up front (``draw_params``), one row per step:
``[dx1, dy1, scale, angle_deg, dx2, dy2]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

N_PARAMS = 6


@dataclass(frozen=True)
class TransformSpec:
    pad: int = 12
    pad_value: float = 0.5
    jitter1: int = 8
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))  # 0.90 .. 1.10, step 0.02
    angles: tuple[float, ...] = tuple(range(-10, 11)) + (0,) * 5  # degrees; 0 weighted extra (Lucid)
    jitter2: int = 4

    def __post_init__(self) -> None:
        if min(self.pad, self.jitter1, self.jitter2) < 0:
            raise ValueError(f"pad and jitter must be >= 0, got {self}")
        if not self.scales or not self.angles or min(self.scales) <= 0:
            raise ValueError(f"scales must be non-empty and positive and angles non-empty, got {self}")

    def output_size(self, size: int) -> int:
        """Field of view (canvas pixels at scale 1) for a ``size`` image: Lucid's output size at scale 1."""
        t = size + 2 * self.pad - self.jitter1 - self.jitter2
        if t < 1:
            raise ValueError(f"transforms leave no image: size {size} + 2*pad {self.pad} - jitters "
                             f"{self.jitter1}+{self.jitter2} < 1")
        return t


def draw_params(spec: TransformSpec, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Transform parameters for ``steps`` steps of one image, ``steps x 6`` float32."""
    j1 = torch.randint(0, spec.jitter1 + 1, (steps, 2), generator=generator)
    si = torch.randint(0, len(spec.scales), (steps,), generator=generator)
    ai = torch.randint(0, len(spec.angles), (steps,), generator=generator)
    j2 = torch.randint(0, spec.jitter2 + 1, (steps, 2), generator=generator)
    scales = torch.tensor(spec.scales, dtype=torch.float32)[si]
    angles = torch.tensor(spec.angles, dtype=torch.float32)[ai]
    return torch.cat([j1.float(), scales[:, None], angles[:, None], j2.float()], dim=1)


def identity_params(n: int, spec: TransformSpec) -> torch.Tensor:
    """Centred crops, scale 1, no rotation: the deterministic view (used for previews and tests)."""
    p = torch.zeros(n, N_PARAMS)
    p[:, 0:2] = spec.jitter1 / 2
    p[:, 2] = 1.0
    p[:, 4:6] = spec.jitter2 / 2
    return p


def affine_matrices(params: torch.Tensor, spec: TransformSpec, size: int) -> torch.Tensor:
    """``B x 2 x 3`` matrices for ``F.affine_grid`` (align_corners=False) from ``B x 6`` parameters.

    In pixel units about the image centre, an output point ``v`` (scaled-image pixels) reads the
    input at ``u = R(-angle) (v + c2) / scale + c1``, with ``c = offset - jitter/2`` the centre of
    each crop window; normalised coordinates divide by ``size/2`` (input) and ``T/2`` (output).
    """
    t = spec.output_size(size)
    c1 = params[:, 0:2] - spec.jitter1 / 2
    s = params[:, 2]
    a = params[:, 3] * (math.pi / 180)
    c2 = params[:, 4:6] - spec.jitter2 / 2
    cos, sin = torch.cos(a), torch.sin(a)
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # R(-angle), x right y down
    lin = rot * (t / (size * s))[:, None, None]
    shift = (torch.einsum("bij,bj->bi", rot, c2) / s[:, None] + c1) * (2.0 / size)
    return torch.cat([lin, shift[:, :, None]], dim=2)


def apply_affine(x: torch.Tensor, theta: torch.Tensor, out_size: int, pad_value: float) -> torch.Tensor:
    """Sample ``x`` (B x C x H x W) through ``theta`` on an ``out_size`` grid; outside reads ``pad_value``."""
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x - pad_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + pad_value


def transform_batch(x: torch.Tensor, params: torch.Tensor, spec: TransformSpec, out_size: int | None = None) -> torch.Tensor:
    """Apply each image's own transform: ``x`` is ``B x C x S x S``, ``params`` ``B x 6``."""
    size = x.shape[-1]
    out = out_size or spec.output_size(size)
    return apply_affine(x, affine_matrices(params.to(x.device), spec, size), out, spec.pad_value)


def describe(spec: TransformSpec) -> dict:
    """JSON-able description for the manifest."""
    return {"pad": spec.pad, "pad_value": spec.pad_value, "jitter1": spec.jitter1, "scales": list(spec.scales),
            "angles": list(spec.angles), "jitter2": spec.jitter2, "per_image": True,
            "implementation": "single affine grid_sample per image, fixed output size"}


def stack_params(per_image: Sequence[torch.Tensor]) -> torch.Tensor:
    """``steps x B x 6`` from per-image ``steps x 6`` draws (index by step in the loop)."""
    return torch.stack(list(per_image), dim=1)
