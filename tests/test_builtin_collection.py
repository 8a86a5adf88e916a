"""The built-in natural-image collection: real photographs, deterministic, written as ordinary files."""

import numpy as np
from PIL import Image

from contracts.common import sha256_file
from stimuli_gen.builtin_collection import PHOTOS, crop_boxes, write_builtin_collection


def test_collection_layout_and_determinism(tmp_path):
    a = write_builtin_collection(tmp_path / "a", crops_per_photo=3, seed=7)
    b = write_builtin_collection(tmp_path / "b", crops_per_photo=3, seed=7)
    c = write_builtin_collection(tmp_path / "c", crops_per_photo=3, seed=8)
    assert len(a) == 3 * len(PHOTOS)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert [sha256_file(p) for p in a] == [sha256_file(p) for p in b]
    assert [sha256_file(p) for p in a] != [sha256_file(p) for p in c]
    for p in a:
        img = Image.open(p)
        assert img.format == "JPEG" and img.mode == "RGB" and min(img.size) == 256
        assert p.parent.name in PHOTOS  # ImageNet-val-like: one folder per source


def test_second_call_writes_nothing_and_new_params_rewrite(tmp_path):
    paths = write_builtin_collection(tmp_path, crops_per_photo=2, seed=0)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert write_builtin_collection(tmp_path, crops_per_photo=2, seed=0) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    before = sha256_file(paths[0])
    write_builtin_collection(tmp_path, crops_per_photo=2, seed=1)
    assert sha256_file(paths[0]) != before


def test_crop_boxes_stay_inside_the_photo():
    rng = np.random.default_rng(0)
    for top, left, h, w in crop_boxes(300, 451, 200, rng):
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 451
        assert 0.7 <= w / h <= 1.4 and min(h, w) >= 0.3 * 300
