"""What the generator may write and delete: the output folder is never the collection, never inside
it or above it, and ``--overwrite`` replaces only a folder that is recognisably a stimulus set.

Pure checks on paths (no torch); ``stimuli_gen.pipeline`` calls ``check_output_folder`` before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

from contracts.stimulus_set import IMAGES_TABLE, MANIFEST, SCHEMA, UNITS_TABLE

WORK_DIR = ".work"  # the generator's checkpoints inside the output folder
# Top-level names the generator writes into a set folder (besides what the manifest lists).
GENERATOR_NAMES = {MANIFEST, MANIFEST + ".tmp", UNITS_TABLE, IMAGES_TABLE, "images", WORK_DIR, "skipped_files.csv",
                   "converted_files.csv", "collection_files.csv", "validation.csv", "activations.npy",
                   "activations_columns.csv"}


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def collection_paths(source: str, builtin_dir: str) -> list[Path]:
    """The paths that hold the collection: its folder, or its text file and the folders the file names
    (resolved, so a symlink or ``..`` cannot hide them)."""
    if source == "builtin":
        return [Path(builtin_dir).resolve()]
    src = Path(source)
    if src.is_file():
        held = [src.resolve()]
        try:
            lines = src.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return held
        folders = set()
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                folders.add((p if p.is_absolute() else src.parent / p).resolve().parent)
        return held + sorted(folders)
    return [src.resolve()]


def _is_stimulus_set(folder: Path) -> str | None:
    """None when ``folder`` is recognisably a stimulus set (or an interrupted generator run), else why not."""
    entries = {p.name for p in folder.iterdir()}
    unknown = entries - GENERATOR_NAMES
    mpath = folder / MANIFEST
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return f"its {MANIFEST} is not readable JSON"
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            return f"its {MANIFEST} is not a stimulus-set manifest (schema {SCHEMA!r})"
        listed = {str(rel).split("/")[0] for rel in manifest.get("files", {}) or {}}
        unknown -= listed | set(manifest.get("extra_files", []) or [])
    elif WORK_DIR not in entries:
        return f"it has no {MANIFEST} (and no {WORK_DIR} checkpoint of an interrupted run)"
    if unknown:
        shown = ", ".join(sorted(unknown)[:5]) + (" ..." if len(unknown) > 5 else "")
        return f"it also holds files the generator did not write ({shown})"
    return None


def check_output_folder(out: str | Path, source: str, builtin_dir: str, overwrite: bool, resume: bool) -> None:
    """Refuse (ValueError / FileExistsError) an output folder that is, holds or lies inside the collection,
    and an existing non-empty folder unless ``resume``, or ``overwrite`` of a recognisable stimulus set."""
    out = Path(out)
    out_r = out.resolve()
    for held in collection_paths(source, builtin_dir):
        if _inside(held, out_r):
            raise ValueError(f"--out {out} is or contains the collection ({held}); refusing to write there")
        if held.is_dir() and _inside(out_r, held):
            raise ValueError(f"--out {out} lies inside the collection folder {held}; the set's images would become "
                             f"part of the collection. Choose a folder outside it")
    if not out.exists() or resume:
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if not any(p.name != WORK_DIR for p in out.iterdir()):
        return  # empty, or only the checkpoint of an interrupted run
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it or --resume to continue it")
    why = _is_stimulus_set(out)
    if why:
        raise FileExistsError(f"{out} is not a stimulus set ({why}): --overwrite only replaces a stimulus set; "
                              f"nothing was deleted. Choose another --out, or move that folder away yourself")


def exemplar_overlap_note(natural, k: int) -> str | None:
    """A warning when a unit's top-k and bottom-k natural exemplars share images (k close to the number of
    usable images): such a unit's two sides do not contrast. None when no unit is affected."""
    shown = natural[natural["rank"] < k]
    overlapping = []
    for unit, g in shown.groupby("unit_id", sort=True):
        both = set(g.image_index[g.kind == "natural_max"]) & set(g.image_index[g.kind == "natural_min"])
        if both:
            overlapping.append((unit, len(both)))
    if not overlapping:
        return None
    unit, n = overlapping[0]
    return (f"the top-{k} and bottom-{k} natural exemplars share images for {len(overlapping)} unit(s) (e.g. {unit}: "
            f"{n} of {k}): k is too large for the usable images of the collection; the two sides of such a unit "
            f"do not contrast. Use a smaller --k or a larger collection")
