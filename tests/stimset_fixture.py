"""A small, valid stimulus set made without torch, for tests of the experiment and analysis.

Natural images are crops of the built-in collection; "feature visualizations" are coloured
gratings whose orientation and hue depend on the unit, so matching by eye is possible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from contracts.stimulus_set import image_relpath, make_unit_id, write_stimulus_set
from stimuli_gen.builtin_collection import write_builtin_collection

FIXTURE_LAYERS = {"early": ["inception3a", "inception3b"], "middle": ["inception4a", "inception4b", "inception4c"],
                  "late": ["inception4d", "inception4e", "inception5a", "inception5b"]}


def grating(size: int, angle: float, hue: np.ndarray, freq: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    g = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)))
    return (255 * (g[..., None] * hue[None, None, :] + (1 - g[..., None]) * (1 - hue[None, None, :]))).astype(np.uint8)


def make_fixture_set(root: Path, collection_dir: Path, units_per_group: int = 4, k: int = 10, seed: int = 0,
                     size: int = 64) -> Path:
    """Write a stimulus set with ``units_per_group`` units per layer group and ``k`` images per kind."""
    rng = np.random.default_rng(seed)
    natural = write_builtin_collection(collection_dir, crops_per_photo=8, seed=seed)
    units, images = [], []
    for group, layers in FIXTURE_LAYERS.items():
        # units of one group never share a crop nor show near duplicates (crops of one photograph look
        # alike): unit i of a group shows its crops turned by one of the 8 flips/rotations of a square
        free = list(rng.permutation(len(natural)))
        for i in range(units_per_group):
            layer = layers[i % len(layers)]
            channel = int(rng.integers(0, 256))
            uid = make_unit_id(layer, channel)
            while uid in {u["unit_id"] for u in units}:
                channel += 1
                uid = make_unit_id(layer, channel)
            units.append({"unit_id": uid, "group": group, "layer": layer, "channel": channel})
            if len(free) < k:
                free = list(rng.permutation(len(natural)))  # more units than crops: reuse (tests of sharing)
            picks = free[:k] + list(rng.choice(len(natural), size=k, replace=False))  # natural_max, natural_min
            free = free[k:]
            angle, hue, freq = rng.uniform(0, np.pi), rng.uniform(0, 1, 3), rng.uniform(2, 8)
            for kind in ("natural_max", "natural_min", "feature_vis"):
                for rank in range(k):
                    rel = image_relpath(uid, kind, rank)
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    if kind == "feature_vis":
                        img = Image.fromarray(grating(size, angle + 0.1 * rank, hue, freq))
                        act = 10.0 - 0.1 * rank
                    else:
                        src = natural[picks[rank if kind == "natural_max" else k + rank]]
                        img = Image.open(src).convert("RGB").resize((size, size))
                        if kind == "natural_max" and i % 8:
                            img = img.transpose([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                                 Image.Transpose.ROTATE_270, Image.Transpose.FLIP_LEFT_RIGHT,
                                                 Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.TRANSPOSE,
                                                 Image.Transpose.TRANSVERSE][i % 8 - 1])
                        act = (5.0 - 0.2 * rank) if kind == "natural_max" else (-1.0 + 0.1 * rank)
                    img.save(root / rel)
                    images.append({"unit_id": uid, "kind": kind, "rank": rank, "activation": act, "file": rel})
    manifest = {
        "set_id": root.name,
        "model": {"name": "torchvision_googlenet", "weights": {"source": "random", "identity": "random", "sha256": None, "seed": seed}},
        "random_weights": True,
        "layer_groups": FIXTURE_LAYERS,
        "parameters": {"fixture": True, "k": k, "size": size},
        "seeds": {"fixture": seed},
        "software": {},
        "notes": ["TEST FIXTURE: gratings stand in for feature visualizations; random weights."],
    }
    write_stimulus_set(root, manifest, pd.DataFrame(units), pd.DataFrame(images))
    return root
