"""A small built-in natural-image collection for tests and the demo.

Deterministic crops of the colour photographs that scikit-image ships, written as JPEG files in
an ImageNet-val-like folder tree, so that the same reader that reads a lab's ImageNet folder reads
them. No torch here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

# Colour photographs bundled with scikit-image (no download needed).
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "stereo_motorcycle",
    "retina",
    "colorwheel",
)


def load_photo(name: str) -> np.ndarray:
    """One of :data:`PHOTOS` as an HxWx3 uint8 array."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo pairs: the left view
        img = img[0]
    return np.ascontiguousarray(img[..., :3])


def crop_boxes(height: int, width: int, n: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """``n`` random crop boxes (top, left, h, w): 35-90% of the short side, aspect 3:4 to 4:3."""
    boxes = []
    short = min(height, width)
    for _ in range(n):
        side = rng.uniform(0.35, 0.9) * short
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        h = int(min(height, round(side / np.sqrt(aspect))))
        w = int(min(width, round(side * np.sqrt(aspect))))
        top = int(rng.integers(0, height - h + 1))
        left = int(rng.integers(0, width - w + 1))
        boxes.append((top, left, h, w))
    return boxes


def write_builtin_collection(
    out_dir: os.PathLike | str,
    crops_per_photo: int = 12,
    short_side: int = 256,
    seed: int = 0,
    photos: tuple[str, ...] = PHOTOS,
) -> list[Path]:
    """Write deterministic crops as ``out_dir/<photo>/<photo>_<i>.jpg``; returns the file paths.

    Each crop is resized so its short side is ``short_side`` and flipped horizontally at random.
    A ``collection.json`` records the parameters; a second call with the same ones writes nothing.
    """
    out = Path(out_dir)
    params = {"source": "scikit-image photographs", "photos": list(photos), "crops_per_photo": crops_per_photo,
              "short_side": short_side, "seed": seed}
    marker = out / "collection.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return sorted(out.glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    paths = []
    for name in photos:
        photo = load_photo(name)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, (top, left, h, w) in enumerate(crop_boxes(*photo.shape[:2], crops_per_photo, rng)):
            flip = bool(rng.integers(0, 2))
            path = folder / f"{name}_{i:04d}.jpg"
            paths.append(path)
            crop = Image.fromarray(photo[top : top + h, left : left + w])
            scale = short_side / min(h, w)
            crop = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
            if flip:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            tmp = path.with_suffix(".tmp")
            crop.save(tmp, format="JPEG", quality=92)
            os.replace(tmp, path)
    marker.write_text(json.dumps(params, indent=2) + "\n")
    return sorted(paths)
