"""Images shared between units: the same photograph (or a near duplicate) must never be in two rows of
one trial, or matching those two rows needs no understanding of either unit.

The exemplar pass lets one crop be a top image of several units of a layer group, so the check is
done on the set: two units of a group *conflict* when any of their natural images in the ranks a
design shows are identical (same sha256, from the manifest) or near duplicates (64-bit difference
hashes within ``design.near_duplicate_bits`` bits, as the generator's ``--dedupe-hamming``).
Triplet building leaves out every triplet with a conflicting pair (``design.shared_images =
"exclude"``); each built trial is checked again (``check_trial``). Pure functions apart from
``image_fingerprints``, which reads the image files.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

KIND_NATURAL = "natural_max"


def dhash(path: Path) -> int:
    """64-bit difference hash of an image file (9 x 8 grayscale thumbnail, box filter)."""
    with Image.open(path) as im:
        g = np.asarray(im.convert("L").resize((9, 8), Image.BOX), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).reshape(-1)
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def image_fingerprints(root: Path, file_sha256: dict[str, str], files: list[str]) -> dict[str, tuple[str, int]]:
    """file -> (sha256 as recorded in the manifest, dhash) for the given files of a set."""
    return {f: (file_sha256.get(f) or f, dhash(Path(root) / f)) for f in files}


def shown_natural_files(images: pd.DataFrame, k_nat: int) -> pd.DataFrame:
    """The natural_max rows a design can show: ranks 0..k_nat-1."""
    sel = images[(images.kind == KIND_NATURAL) & (images["rank"].astype(int) < k_nat)]
    return sel[["unit_id", "rank", "file"]]


def conflicting_pairs(units: pd.DataFrame, images: pd.DataFrame, k_nat: int, fingerprints: dict[str, tuple[str, int]],
                      max_bits: int) -> dict[str, list[tuple[str, str, str, str]]]:
    """Per layer group, the unit pairs that share a shown natural image: ``(unit_a, unit_b, file_a, file_b)``
    (one example pair of files each). ``max_bits < 0``: identical images only."""
    shown = shown_natural_files(images, k_nat)
    group_of = dict(zip(units.unit_id, units.group))
    out: dict[str, list] = {g: [] for g in units.group.unique()}
    by_unit: dict[str, list[tuple[str, str, int]]] = {}
    for uid, f in zip(shown.unit_id, shown.file):
        sha, h = fingerprints[f]
        by_unit.setdefault(uid, []).append((f, sha, h))
    for g in out:
        ids = sorted(u for u in by_unit if group_of.get(u) == g)
        for a, b in itertools.combinations(ids, 2):
            hit = _first_shared(by_unit[a], by_unit[b], max_bits)
            if hit:
                out[g].append((a, b, *hit))
    return out


def _first_shared(xs, ys, max_bits: int) -> tuple[str, str] | None:
    for fa, sa, ha in xs:
        for fb, sb, hb in ys:
            if sa == sb or (max_bits >= 0 and bin(ha ^ hb).count("1") <= max_bits):
                return fa, fb
    return None


def check_trial(rows_by_unit: dict[str, list[str]], fingerprints: dict[str, tuple[str, int]], max_bits: int) -> str | None:
    """None when no two units of a trial show the same (or a near-duplicate) image, else what is shared."""
    for (ua, fa), (ub, fb) in itertools.combinations(rows_by_unit.items(), 2):
        xs = [(f, *fingerprints[f]) for f in fa if f in fingerprints]
        ys = [(f, *fingerprints[f]) for f in fb if f in fingerprints]
        hit = _first_shared(xs, ys, max_bits)
        if hit:
            return f"units {ua} and {ub} show the same image ({hit[0]} and {hit[1]})"
    return None
