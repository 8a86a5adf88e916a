"""Contract 1: a stimulus set, ``data/stimuli/<set_id>/``.

Layout::

    manifest.json   provenance: model, weights identity, layer groups, all parameters and seeds,
                    software versions, sha256 of every file below
    units.csv       one row per unit: unit_id, group, layer, channel
    images.csv      one row per image: unit_id, kind, rank, activation, file
    images/<unit_id>/<kind>_<rank>.png
    path_similarity.csv  optional (1.1): the path-similarity check, one row per unit and network stage

Version 1.1 adds the optional ``path_similarity.*`` files, the ``path_similarity_*`` columns of
``validation.csv`` and ``parameters.path_similarity``; 1.0 sets are read unchanged.

``kind`` is ``natural_max`` (rank 0 = most activating), ``natural_min`` (rank 0 = least
activating) or ``feature_vis`` (rank = visualization index). ``file`` is relative to the set.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from contracts.common import (
    ContractError,
    check_schema,
    read_json,
    read_table,
    require_fields,
    sha256_file,
    sha256_json,
    write_json_atomic,
)

SCHEMA = "fvmatch.stimulus_set"
SCHEMA_VERSION = "1.1"  # 1.1: content_sha256 of the manifest itself; images.csv column random_weights;
# feature-visualization search columns, calibration and sampling records (issue 17); the optional
# path-similarity files (path_similarity.csv, issue 14); optional "manipulation" (issue 15)
CONTENT_HASH_FIELD = "content_sha256"
UNCHECKED_WARNING = ("was written before stimulus-set schema 1.1: edits of its manifest.json (e.g. of random_weights) "
                     "cannot be detected")
PATH_SIMILARITY_TABLE = "path_similarity.csv"
MANIFEST = "manifest.json"
UNITS_TABLE = "units.csv"
IMAGES_TABLE = "images.csv"
KINDS = ("natural_max", "natural_min", "feature_vis")
LAYER_GROUPS = ("early", "middle", "late")

UNIT_COLUMNS = {"unit_id": "str", "group": "str", "layer": "str", "channel": "int"}
IMAGE_COLUMNS = {"unit_id": "str", "kind": "str", "rank": "int", "activation": "float", "file": "str"}

MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "set_id": str,
    "created": str,
    "model": dict,  # {"name", "weights": {"source", "identity", "sha256", "seed"}}
    "random_weights": bool,  # true when the network was not trained: stimuli are meaningless
    "layer_groups": dict,  # {"early": [layer, ...], "middle": [...], "late": [...]}
    "parameters": dict,  # every generation parameter (collection, exemplars, feature_vis, sampling)
    "seeds": dict,  # every seed used
    "software": dict,
    "files": dict,  # relative path -> sha256, for every file of the set but the manifest
}
# optional (1.1): a manipulated network (stimuli_gen.manipulate); absent or null for the original
MANIPULATION_FIELDS: dict[str, type | tuple[type, ...]] = {"kind": str, "units": list, "statement": str}
WEIGHT_SOURCES = ("pretrained", "file", "random")
_SET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # \Z: "$" would accept a final newline


def make_unit_id(layer: str, channel: int) -> str:
    """Stable, file-system-safe unit id, e.g. ``inception4a_c0017``."""
    return f"{layer}_c{int(channel):04d}"


def image_relpath(unit_id: str, kind: str, rank: int) -> str:
    """Where an image of a unit lives inside the set (POSIX separators, as recorded)."""
    return f"images/{unit_id}/{kind}_{int(rank):02d}.png"


@dataclass
class StimulusSet:
    """A validated stimulus set loaded from disk."""

    root: Path
    manifest: dict
    units: pd.DataFrame
    images: pd.DataFrame
    manifest_sha256: str = field(default="")
    warnings: list[str] = field(default_factory=list)  # e.g. a set written before the manifest check existed

    @property
    def set_id(self) -> str:
        return self.manifest["set_id"]

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest["random_weights"])

    @property
    def manipulation(self) -> dict | None:
        """What was manipulated in the network (``stimuli_gen.manipulate``), or None for the original.
        Sets of version 1.0 have no such field: their networks were not manipulated."""
        return self.manifest.get("manipulation")

    def path(self, relfile: str) -> Path:
        return self.root / relfile

    def unit_images(self, unit_id: str, kind: str) -> pd.DataFrame:
        """Images of one unit and kind, sorted by rank."""
        sel = self.images[(self.images.unit_id == unit_id) & (self.images.kind == kind)]
        return sel.sort_values("rank")

    def verify_files(self) -> list[str]:
        """Check every file listed in the manifest: present and sha256 as recorded.

        Returns human-readable problems (empty when the set is intact).
        """
        problems = []
        for rel, digest in self.manifest["files"].items():
            p = self.root / rel
            if not p.is_file():
                problems.append(f"missing file: {rel}")
            elif sha256_file(p) != digest:
                problems.append(f"changed file (sha256 differs from manifest): {rel}")
        listed = set(self.manifest["files"])
        for rel in self.images["file"]:
            if rel not in listed:
                problems.append(f"image not listed in manifest files: {rel}")
        return problems


def write_stimulus_set(root: os.PathLike | str, manifest: dict, units: pd.DataFrame, images: pd.DataFrame) -> Path:
    """Write the tables, hash every file and write the manifest last.

    ``manifest`` holds everything but ``schema``, ``schema_version``, ``created`` (filled in when
    missing) and ``files`` (computed here). Images must already be on disk under ``root``.
    Returns the manifest path. The result is validated by reading it back.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # the random-weights status also lives in images.csv (hashed in the manifest): editing one field cannot remove it
    images = images.assign(random_weights=int(bool(manifest["random_weights"])))
    _required_first(units, UNIT_COLUMNS).to_csv(root / UNITS_TABLE, index=False)
    _required_first(images, IMAGE_COLUMNS).to_csv(root / IMAGES_TABLE, index=False, float_format="%.9g")
    files = {UNITS_TABLE: sha256_file(root / UNITS_TABLE), IMAGES_TABLE: sha256_file(root / IMAGES_TABLE)}
    for rel in sorted(set(images["file"])):
        p = root / rel
        if not p.is_file():
            raise ContractError(p, "image listed in images table is missing")
        files[rel] = sha256_file(p)
    for rel in manifest.get("extra_files", []):
        files[rel] = sha256_file(root / rel)
    full = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **{k: v for k, v in manifest.items() if k not in ("schema", "schema_version", "files", CONTENT_HASH_FIELD)},
        "files": files,
    }
    full = json.loads(json.dumps(full, default=str))  # hash exactly what a reader will see
    full[CONTENT_HASH_FIELD] = manifest_content_sha256(full)
    write_json_atomic(root / MANIFEST, full)
    load_stimulus_set(root)  # never leave a set behind that its readers would refuse
    return root / MANIFEST


def manifest_content_sha256(manifest: dict) -> str:
    """sha256 of the manifest's content (canonical JSON, sorted keys) without the ``content_sha256`` field:
    any edit of any field, even a valid-looking one, changes it."""
    return sha256_json({k: v for k, v in manifest.items() if k != CONTENT_HASH_FIELD})


def _check_integrity(mpath: Path, manifest: dict, images: pd.DataFrame, ipath: Path) -> list[str]:
    """Refuse a manifest edited after it was written; a set older than 1.1 is read with a warning."""
    minor = int(str(manifest["schema_version"]).split(".")[1]) if "." in str(manifest["schema_version"]) else 0
    if CONTENT_HASH_FIELD not in manifest:
        if minor >= 1:
            raise ContractError(mpath, f"missing field '{CONTENT_HASH_FIELD}' (schema {manifest['schema_version']} "
                                       "records it): the manifest was edited; regenerate the set")
        return [f"stimulus set {mpath.parent} {UNCHECKED_WARNING}"]
    if manifest[CONTENT_HASH_FIELD] != manifest_content_sha256(manifest):
        raise ContractError(mpath, f"the manifest was edited after it was written ('{CONTENT_HASH_FIELD}' does not "
                                   "match its content); refusing a set whose provenance (random weights, parameters, "
                                   "set id) may no longer be true. Regenerate the set")
    if "random_weights" in images:
        flags = set(images["random_weights"])
        if flags != {str(int(manifest["random_weights"]))}:
            raise ContractError(ipath, f"column 'random_weights' {sorted(flags)} disagrees with the manifest's "
                                       f"random_weights={manifest['random_weights']}; refusing the set")
    elif minor >= 1:
        raise ContractError(ipath, "missing column random_weights (schema 1.1 records it)")
    return []
def add_files_to_set(root: os.PathLike | str, relfiles: list[str], parameters: dict) -> Path:
    """Record files written into an existing set (new or replaced) and extra ``parameters`` entries:
    rehash them, list them in ``extra_files``, and rewrite the manifest atomically (last). The
    manifest's sha256 changes, so sessions recorded with the old manifest no longer match it."""
    root = Path(root)
    mpath = root / MANIFEST
    load_stimulus_set(root)  # refuses an edited manifest before this writer re-seals it
    manifest = read_json(mpath)
    for rel in relfiles:
        manifest["files"][rel] = sha256_file(root / rel)
    manifest["extra_files"] = sorted(set(manifest.get("extra_files", [])) | set(relfiles))
    manifest["parameters"].update(parameters)
    if CONTENT_HASH_FIELD in manifest:  # a 1.0 set keeps its version: it lacks what 1.1 requires (images.csv random_weights)
        manifest["schema_version"] = SCHEMA_VERSION
        manifest[CONTENT_HASH_FIELD] = manifest_content_sha256(manifest)  # this writer's own change, re-sealed
    write_json_atomic(mpath, manifest)
    load_stimulus_set(root)
    return mpath


def _required_first(df: pd.DataFrame, required: dict) -> pd.DataFrame:
    """Contract columns first, in their documented order, then any extra columns."""
    return df[list(required) + [c for c in df.columns if c not in required]]


def load_stimulus_set(root: os.PathLike | str) -> StimulusSet:
    """Read and validate a stimulus set. Raises ContractError naming the file and field."""
    root = Path(root)
    if not root.is_dir():
        raise ContractError(root, "stimulus set folder not found")
    mpath = root / MANIFEST
    manifest = read_json(mpath)
    check_schema(mpath, manifest, SCHEMA, int(SCHEMA_VERSION.split(".")[0]))
    require_fields(mpath, manifest, MANIFEST_FIELDS)
    if not _SET_ID.match(manifest["set_id"]):
        raise ContractError(mpath, f"field 'set_id' {manifest['set_id']!r} must be letters, digits, '_', '-', '.'")
    model = manifest["model"]
    require_fields(mpath, model, {"name": str, "weights": dict}, "model.")
    require_fields(mpath, model["weights"], {"source": str}, "model.weights.")
    if model["weights"]["source"] not in WEIGHT_SOURCES:
        raise ContractError(mpath, f"field 'model.weights.source' must be one of {WEIGHT_SOURCES}")
    if (model["weights"]["source"] == "random") != manifest["random_weights"]:
        raise ContractError(mpath, "field 'random_weights' disagrees with 'model.weights.source'")
    manip = manifest.get("manipulation")
    if manip is not None:
        if not isinstance(manip, dict):
            raise ContractError(mpath, "field 'manipulation' must be an object or null")
        require_fields(mpath, manip, MANIPULATION_FIELDS, "manipulation.")
    for group, layers in manifest["layer_groups"].items():
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise ContractError(mpath, f"field 'layer_groups.{group}' must be a list of layer names")

    upath, ipath = root / UNITS_TABLE, root / IMAGES_TABLE
    units = read_table(upath, UNIT_COLUMNS)
    dup = units.unit_id[units.unit_id.duplicated()]
    if len(dup):
        raise ContractError(upath, f"column 'unit_id': duplicate unit {dup.iloc[0]!r}")
    bad_group = ~units.group.isin(list(manifest["layer_groups"]))
    if bad_group.any():
        i = int(bad_group.to_numpy().nonzero()[0][0])
        raise ContractError(upath, f"column 'group', row {i + 1}: {units.group.iloc[i]!r} is not a layer group of the manifest")

    images = read_table(ipath, IMAGE_COLUMNS)
    for col, allowed, what in (("kind", set(KINDS), f"one of {KINDS}"), ("unit_id", set(units.unit_id), "a unit of units.csv")):
        bad = ~images[col].isin(allowed)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise ContractError(ipath, f"column '{col}', row {i + 1}: {images[col].iloc[i]!r} is not {what}")
    for i, rel in enumerate(images["file"]):
        pp = PurePosixPath(rel)
        if pp.is_absolute() or ".." in pp.parts or "\\" in rel or not rel:
            raise ContractError(ipath, f"column 'file', row {i + 1}: {rel!r} must be a relative path inside the set")
    dup = images.duplicated(["unit_id", "kind", "rank"])
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise ContractError(ipath, f"row {i + 1}: duplicate (unit_id, kind, rank) {tuple(images.loc[images.index[i], ['unit_id', 'kind', 'rank']])}")
    warnings = _check_integrity(mpath, manifest, images, ipath)
    return StimulusSet(root=root, manifest=manifest, units=units, images=images, manifest_sha256=sha256_file(mpath),
                       warnings=warnings)
