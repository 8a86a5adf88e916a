"""An image-computable simulated observer (policy ``features`` / ``features:LAYER``).

It does the matching task from the images alone: every row of a trial (its 1..n images) becomes the
mean, over its images, of the spatially averaged post-ReLU features of a fixed network layer
(torchvision GoogLeNet, ``inception3b`` by default); reference row i and candidate row j are scored by
the cosine similarity of their features, and the assignment maximizing the total similarity is
solved with ``scipy.optimize.linear_sum_assignment``. No randomness: the same trial gives the same
answer. Weights: torchvision's pretrained GoogLeNet when its cache holds it, else a seeded random
network (the policy recorded in session.json then says ``random``), because nothing can be
downloaded on a lab machine mid-session.

A control works through it: on a stimulus set of a fooling-circuit or silent-unit network the
feature visualizations no longer look like what the unit responds to, so its feature-visualization
trials fall towards chance while exemplar trials do not.
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import numpy as np

_POLICY = re.compile(r"^features(:(?P<layer>inception[345][a-e]))?$")
DEFAULT_LAYER = "inception3b"


def is_feature_policy(text: str) -> bool:
    return bool(_POLICY.match(text))


def feature_layer(policy: str) -> str:
    m = _POLICY.match(policy)
    if not m:
        raise ValueError(f"not a feature-observer policy: {policy!r}")
    return m.group("layer") or DEFAULT_LAYER


@functools.lru_cache(maxsize=2)
def _network(weights: str):
    from stimuli_gen.models import load_model
    from stimuli_gen.pipeline import resolve_weights

    resolved, _ = resolve_weights("torchvision_googlenet", weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model("torchvision_googlenet", resolved, seed=0)


def weights_used(weights: str = "auto") -> str:
    """``pretrained`` or ``random``: what the observer's network really is (recorded with the policy)."""
    return _network(weights).weights["source"]


def state_sha256(net) -> str:
    """sha256 of a network's parameters and buffers as loaded (names, dtypes, shapes, bytes, in name order):
    identifies random weights too, which have no file."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=2)
def observer_record(policy: str, weights: str = "auto") -> dict:
    """What ``session.json`` records as ``simulated_observer``: the network, layer and weights the observer
    really used (a random network is named as such, with the hash of its parameters)."""
    model = _network(weights)
    w = model.weights
    return {"policy": policy, "kind": "image-computable (experiment.image_observer)", "network": model.name,
            "layer": feature_layer(policy), "features": "spatial mean of post-ReLU activations, images at 112 px",
            "matching": "cosine similarity of row means, linear_sum_assignment",
            "weights": {"source": w["source"], "identity": w["identity"], "random": w["source"] == "random",
                        "seed": w.get("seed"), "file_sha256": w.get("sha256"), "state_sha256": state_sha256(model.net)}}


@functools.lru_cache(maxsize=4096)
def image_features(path: Path, layer: str, weights: str = "auto", size: int = 112) -> np.ndarray:
    """Spatially averaged post-ReLU features of one image (cached: images recur across trials)."""
    import torch
    from PIL import Image

    model = _network(weights)
    x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB").resize((size, size))).copy())
    with torch.inference_mode():
        a = model.net.forward_layers(x.permute(2, 0, 1)[None].float() / 255, [layer], relu="post")[layer]
    return a.mean((2, 3))[0].double().numpy()


def row_features(root: Path, files_by_row, layer: str, weights: str = "auto") -> np.ndarray:
    """``rows x channels``: mean over each row's images of their features."""
    return np.stack([np.mean([image_features(root / f, layer, weights) for f in files], axis=0) for files in files_by_row])


def assignment_from_similarity(sim: np.ndarray) -> list[int]:
    """Reference row i -> candidate row ``a[i]`` maximizing the summed similarity (pure)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-np.asarray(sim))
    return [int(c) for _, c in sorted(zip(rows, cols))]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    return a @ b.T


def choose(root: Path, reference_files, candidate_files, layer: str, weights: str = "auto") -> list[int]:
    """The observer's assignment for one trial."""
    ref = row_features(root, reference_files, layer, weights)
    cand = row_features(root, candidate_files, layer, weights)
    return assignment_from_similarity(cosine(ref, cand))
