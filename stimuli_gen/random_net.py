"""A random network worth optimising: BatchNorm statistics re-estimated on natural images.

torchvision's initialisation of an untrained GoogLeNet (truncated normal weights, BatchNorm running
statistics mean 0 / var 1) shrinks the activations about tenfold per layer: ~1e-7 at inception3b
and ~1e-12 at inception5b. Feature visualizations of such a network are artifacts: any additive
term (diversity) outweighs the unit by orders of magnitude and gradients underflow. Re-estimating
every BatchNorm's running mean and variance on natural images (a forward pass in train mode,
cumulative averages over batches, as in BN recalibration) makes every layer's pre-BatchNorm-scale
activations O(1) again, with the random weights themselves unchanged. Seeded and deterministic:
the same seed and images give the same network.

Only for random weights (the demo and tests). A pretrained network is never touched.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

CALIBRATION_IMAGES = 32  # images of the collection used to re-estimate the statistics
CALIBRATION_SIZE = 112  # px: the crops are resized to this for the calibration pass (4x cheaper than 224)


def calibration_indices(n: int, k: int = CALIBRATION_IMAGES) -> list[int]:
    """``k`` indices spread evenly over ``n`` images (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


@torch.no_grad()
def recalibrate_batchnorm(net, images01: torch.Tensor, batch_size: int = 32) -> int:
    """Re-estimate every BatchNorm's running statistics of ``net`` (a ``FeatureNet``) on ``images01``
    (``N x 3 x H x W`` in [0, 1]); returns the number of BatchNorm layers updated. The net is left in
    eval mode with its weights unchanged."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not bns:
        return 0
    last = net.layer_names[-1]
    old = [(m.momentum, m.training) for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        for s in range(0, len(images01), batch_size):
            net.forward_layers(images01[s:s + batch_size].float(), [last], relu="pre")
    finally:
        for m, (momentum, training) in zip(bns, old):
            m.momentum = momentum
            m.train(training)
    net.eval()
    return len(bns)


@torch.no_grad()
def activation_scale(net, images01: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, float]:
    """Standard deviation of each layer's pre-ReLU activations over ``images01`` (to record and test)."""
    layers = list(layers or net.layer_names)
    acts = net.forward_layers(images01.float(), layers, relu="pre")
    return {layer: float(acts[layer].float().std()) for layer in layers}


def calibrate_on_collection(model, paths: Sequence[str], pp, n: int = CALIBRATION_IMAGES,
                            size: int = CALIBRATION_SIZE) -> dict | None:
    """Recalibrate a random-weights ``LoadedModel`` on ``n`` evenly spaced images of a collection
    (preprocessed crops resized to ``size`` px); records what was done in ``model.weights`` and
    returns that record. None (nothing done) for trained weights or a network without BatchNorm."""
    from stimuli_gen.collection import SkipImage, load_crop

    if not model.random_weights or not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.net.modules()):
        return None
    crops, used = [], []
    for i in calibration_indices(len(paths), n):
        try:
            crops.append(load_crop(paths[i], pp)[0])
            used.append(i)
        except SkipImage:
            continue
    if not crops:
        raise ValueError("cannot recalibrate the random network: no readable image among the calibration images")
    x = torch.nn.functional.interpolate(torch.stack(crops).float() / 255, size=(size, size), mode="bilinear",
                                        antialias=True, align_corners=False)
    n_bn = recalibrate_batchnorm(model.net, x)
    scale = activation_scale(model.net, x)
    record = {"method": "BatchNorm running statistics re-estimated (train-mode forward, cumulative average) "
                        f"on {len(used)} collection images resized to {size} px; weights unchanged",
              "n_batchnorm": n_bn, "image_indices": used, "size": size,
              "activation_std_after": {k: float(f"{v:.4g}") for k, v in scale.items()}}
    model.weights["calibration"] = record
    model.weights["identity"] = f"{model.weights['identity']}, BatchNorm statistics re-estimated on {len(used)} images"
    return record
