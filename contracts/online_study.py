"""Contract 4: an exported online study, ``<study>/study.json`` (written by ``fvmatch-online export``).

The study folder is static (HTML, JavaScript, CSS, images) and is served as it is; ``study.json`` says
what it was made from, so the server rebuilds each participant's trial list with the lab's design code
and records the same stimulus-set identity (manifest sha256) as a lab session.

Layout::

    study.json        this contract
    index.html, task.js, task.css, lib/   the task (jsPsych bundled: no Node needed to serve it)
    stimuli/          manifest.json, units.csv, images.csv of the stimulus set (verbatim copies)
    img/<sha256[:20]>.png   every image the design can show, named by content (no unit in the URL)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from contracts.common import ContractError, JsonDocument, require_fields

SCHEMA = "fvmatch.online_study"
SCHEMA_VERSION = "1.0"
STUDY_FILE = "study.json"
_IMG_NAME = re.compile(r"^img/[0-9a-f]{20}\.png$")

STUDY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "experiment": str,  # data subfolder of the sessions
    "created": str,
    "design": dict,  # the design config as parsed (experiment.config.Design.raw)
    "design_file": str,
    "design_sha256": str,
    "stimulus_set": dict,  # {"set_id", "manifest_sha256", "random_weights"}
    "online": dict,  # the online config (online.config), completion URL etc.
    "images": dict,  # set-relative file -> {"url": "img/<hash>.png", "sha256": ...}
    "software": dict,  # fvmatch, jsPsych and plugin versions
}


def write_study(folder: os.PathLike | str, study: dict) -> Path:
    return _STUDY_DOC.write(Path(folder) / STUDY_FILE, study)


def read_study(folder: os.PathLike | str) -> dict:
    """Read and validate ``study.json``; errors name the file and field."""
    return _STUDY_DOC.read(Path(folder) / STUDY_FILE)


def _validate(path: Path, study: dict) -> None:
    require_fields(path, study, STUDY_FIELDS)
    require_fields(path, study["stimulus_set"], {"set_id": str, "manifest_sha256": str, "random_weights": bool}, "stimulus_set.")
    for rel, entry in study["images"].items():
        if not isinstance(entry, dict) or not _IMG_NAME.match(str(entry.get("url", ""))):
            raise ContractError(path, f"field 'images.{rel}': expected {{'url': 'img/<20 hex>.png', 'sha256': ...}}")


_STUDY_DOC = JsonDocument(SCHEMA, SCHEMA_VERSION, _validate)
