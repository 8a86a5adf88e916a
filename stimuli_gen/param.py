"""Lucid's image parameterization, batched: Fourier spectrum -> decorrelated colour -> sigmoid.

Every image of a batch is an independent leaf slice of one ``B x 3 x H x Wf x 2`` spectrum tensor,
initialised from its own seeded generator, so an image does not depend on what else is in the batch.
Numbers as in Lucid (``lucid.optvis.param.spatial.fft_image`` and ``color.to_valid_rgb``):

* init N(0, 0.01) per real and imaginary part;
* spectrum scale ``1 / max(f, 1/max(h, w)) ** decay_power`` (f in cycles per pixel), inverse real
  FFT with orthonormal scaling (Lucid: unnormalised irfft times ``sqrt(h*w)``), then divided by 4;
* colour: ``x @ (C / max column norm of C).T`` with C Lucid's square root of the ImageNet colour
  correlation matrix, then a sigmoid to [0, 1].

Lucid keeps ``w // 2 + 2`` frequency columns for odd widths (one more than ``irfft`` uses); the
extra column never reaches the image, so we keep ``w // 2 + 1`` for every width.
"""

from __future__ import annotations

from typing import Sequence

import torch

# Lucid's ``color_correlation_svd_sqrt`` (rows: R, G, B).
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                           [0.27, 0.00, -0.05],
                                           [0.27, -0.09, 0.03]], dtype=torch.float64)
_MAX_NORM = COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()  # 0.4620...
COLOR_CORRELATION_NORMALIZED = (COLOR_CORRELATION_SVD_SQRT / _MAX_NORM).float()
FFT_MAGIC = 4.0  # Lucid divides the image by 4 after the inverse FFT


def rfft2d_freqs(h: int, w: int) -> torch.Tensor:
    """Frequency magnitude (cycles per pixel) of each ``rfft2`` coefficient, ``h x (w//2+1)``."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """Per-coefficient scale ``1 / max(f, 1/max(h, w)) ** decay_power`` (``h x Wf x 1``, float32)."""
    freqs = rfft2d_freqs(h, w)
    scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power
    return scale.float()[..., None]


def init_spectrum(generators: Sequence[torch.Generator], size: int, sd: float = 0.01) -> torch.Tensor:
    """Initial spectra ``B x 3 x size x Wf x 2`` (float32, CPU); image i drawn from ``generators[i]`` alone."""
    wf = size // 2 + 1
    out = torch.empty(len(generators), 3, size, wf, 2)
    for i, g in enumerate(generators):
        out[i] = torch.randn(3, size, wf, 2, generator=g) * sd
    return out


def spectrum_to_image(spectrum: torch.Tensor, scale: torch.Tensor, size: int) -> torch.Tensor:
    """Decorrelated-space image ``B x 3 x size x size`` (before colour mixing), in float32."""
    spec = torch.view_as_complex((spectrum.float() * scale).contiguous())
    img = torch.fft.irfftn(spec, s=(size, size), dim=(-2, -1), norm="ortho")
    return img / FFT_MAGIC


def to_valid_rgb(img: torch.Tensor) -> torch.Tensor:
    """Linear colour decorrelation, then sigmoid to [0, 1] (Lucid's ``to_valid_rgb``, decorrelate=True)."""
    m = COLOR_CORRELATION_NORMALIZED.to(img.device, img.dtype)
    mixed = torch.einsum("bchw,dc->bdhw", img, m)
    return torch.sigmoid(mixed)


class FourierImage(torch.nn.Module):
    """A batch of images parameterized by their Fourier spectra; ``forward()`` gives RGB in [0, 1]."""

    def __init__(self, generators: Sequence[torch.Generator], size: int, decay_power: float = 1.0,
                 sd: float = 0.01, device: str | torch.device = "cpu"):
        super().__init__()
        if size < 2:
            raise ValueError(f"image size must be at least 2 px, got {size}")
        self.size = int(size)
        self.spectrum = torch.nn.Parameter(init_spectrum(generators, self.size, sd).to(device))
        self.register_buffer("scale", spectrum_scale(self.size, self.size, decay_power).to(device))

    def forward(self) -> torch.Tensor:
        # Always float32: under autocast the FFT and the sigmoid stay out of bf16.
        with torch.autocast(self.spectrum.device.type, enabled=False):
            return to_valid_rgb(spectrum_to_image(self.spectrum, self.scale, self.size))
