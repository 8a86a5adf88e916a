"""Activations saved with a stimulus set (``--save-activations``) and re-used by a later run
(``--activations-from``): every channel of the group layers for every collection image, so a new
unit sample needs no pass over the images. I/O only; the generator (``stimuli_gen.pipeline``) calls it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from contracts.common import sha256_json
from stimuli_gen.collection import Preprocess
from stimuli_gen.exemplars import lists_from_activations

SKIPPED_TABLE = "skipped_files.csv"
CONVERTED_TABLE = "converted_files.csv"


def lists_from_saved(src: Path, paths: list[str], pp: Preprocess, model, ex, units: pd.DataFrame,
                      keep: int):
    """Candidate lists from an earlier set's ``activations.npy``, after checking that it was made
    from the same collection, preprocessing, model, weights, statistic and ReLU side."""
    mpath = src / "manifest.json"
    if not (src / "activations.npy").is_file() or not mpath.is_file():
        raise ValueError(f"--activations-from {src}: no activations.npy / manifest.json there "
                         f"(make that set with --save-activations)")
    m = json.loads(mpath.read_text())
    p = m["parameters"]
    checks = {"collection files": (p["collection"]["paths_sha256"], sha256_json(paths)),
              "preprocessing": (p["collection"]["preprocess"], pp.to_dict()),
              "model": (m["model"]["name"], model.name),
              "weights": (m["model"]["weights"].get("sha256") or m["model"]["weights"].get("identity"),
                          model.weights.get("sha256") or model.weights.get("identity")),
              "statistic": (p["exemplars"]["statistic"], ex.statistic), "relu": (p["exemplars"]["relu"], ex.relu)}
    bad = [f"{k} ({a!r} there, {b!r} here)" for k, (a, b) in checks.items() if a != b]
    if bad:
        raise ValueError(f"--activations-from {src}: made differently: " + "; ".join(bad))
    arr = np.load(src / "activations.npy", mmap_mode="r")
    lists = lists_from_activations(arr, pd.read_csv(src / "activations_columns.csv"), units, keep)
    sk = pd.read_csv(src / SKIPPED_TABLE, dtype={"reason": str})
    cv = pd.read_csv(src / CONVERTED_TABLE, dtype={"conversion": str})
    return lists, list(zip(sk["index"].astype(int), sk.reason)), list(zip(cv["index"].astype(int), cv.conversion))


def activation_range_problem(path: Path) -> str | None:
    """float16 holds 6e-8..65504: say so when saved activations overflowed or mostly underflowed."""
    arr = np.load(path, mmap_mode="r")
    if arr.dtype != np.float16:
        return None
    n_inf = n_zero = n = 0
    for s in range(0, arr.shape[0], 4096):
        a = np.asarray(arr[s : s + 4096])
        n_inf += int(np.isinf(a).sum())
        n_zero += int((a == 0).sum())
        n += int((~np.isnan(a)).sum())
    if n_inf or n_zero > 0.5 * max(n, 1):
        return (f"activations.npy: float16 cannot hold these activations ({n_inf} infinite, {n_zero} of {n} zero); "
                f"save them again with activations_dtype = 'float32' before re-using them")
    return None


def combine_activations(out: Path, work: Path, all_channels: dict[str, int], n: int, world: int,
                         dtype: str = "float16") -> list[str]:
    """One ``activations.npy`` (images x channels, NaN rows for skipped files) in collection
    order, from the per-rank shards (which need a shared file system under torchrun)."""
    arr = np.lib.format.open_memmap(out / "activations.npy", mode="w+", dtype=np.dtype(dtype),
                                    shape=(n, sum(all_channels.values())))
    for r in range(world):
        part = np.load(work / f"activations_rank{r}.npy", mmap_mode="r")
        arr[r::world] = part
    arr.flush()
    del arr
    pd.DataFrame([(layer, c) for layer, nc in all_channels.items() for c in range(nc)],
                 columns=["layer", "channel"]).rename_axis("column").to_csv(out / "activations_columns.csv")
    return ["activations.npy", "activations_columns.csv"]
