"""Stimulus set + design -> a self-contained static online study folder (``contracts/online_study.py``).

Stages: check the set serves the design (the lab's ``check_set_for_design``), pick the images the design
can show, copy each after checking its sha256 against the set's manifest, copy jsPsych from
``online/web/node_modules`` (installed by ``npm ci``; the exported folder needs no Node), write the task
files and ``study.json``. Images get content-hash names so that URLs do not reveal units.
"""

from __future__ import annotations

import hashlib
import os
import json
import shutil
from pathlib import Path

import pandas as pd

from contracts.common import ContractError, software_versions
from contracts.online_study import write_study
from contracts.session import design_sha256, now_iso
from contracts.stimulus_set import StimulusSet
from experiment.config import Design
from experiment.overlap import shown_natural_files
from experiment.design import KIND_FV, KIND_NATURAL, check_set_for_design, natural_depth, required_images, usable_images

WEB_DIR = Path(__file__).parent / "web"
NODE_MODULES = WEB_DIR / "node_modules"
# npm package -> file copied into lib/ (browser builds: global jsPsychModule / jsPsych<Plugin>)
JSPSYCH_FILES = {
    "jspsych": ["dist/index.browser.min.js", "css/jspsych.css"],
    "@jspsych/plugin-browser-check": ["dist/index.browser.min.js"],
    "@jspsych/plugin-fullscreen": ["dist/index.browser.min.js"],
    "@jspsych/plugin-html-button-response": ["dist/index.browser.min.js"],
    "@jspsych/plugin-preload": ["dist/index.browser.min.js"],
    "@jspsych/plugin-virtual-chinrest": ["dist/index.browser.min.js"],
}
TASK_FILES = ("index.html", "task.js", "task.css")
SET_TABLES = ("manifest.json", "units.csv", "images.csv")


class ExportError(RuntimeError):
    pass


def lib_name(package: str, rel: str) -> str:
    """lib/ file name of a copied npm file, e.g. plugin-preload.js, jspsych.js, jspsych.css."""
    stem = package.split("/")[-1]
    return f"{stem}{Path(rel).suffix}"


def design_images(design: Design, stimset: StimulusSet) -> list[str]:
    """Set-relative files of every image any participant of this design can see (sorted).

    natural_max ranks 0..2n-1 and the feature visualizations of the units in the design's layer groups
    (all usable ones for ``fv_source = "random"``, ranks 0..n-1 for ``"first"``); spares never.
    """
    k_nat, k_fv = required_images(design)
    units = stimset.units[stimset.units.group.isin(design["design"]["layer_groups"])].unit_id
    imgs = usable_images(stimset.images)
    imgs = imgs[imgs.unit_id.isin(set(units))]
    nat = imgs[(imgs.kind == KIND_NATURAL) & (imgs["rank"] < natural_depth(design, stimset.images))]
    fv = imgs[imgs.kind == KIND_FV]
    if design["design"]["fv_source"] == "first":
        fv = fv[fv["rank"] < k_fv]
    elif k_fv == 0:
        fv = fv.iloc[0:0]
    return sorted(set(pd.concat([nat, fv])["file"]))


def copy_checked(stimset: StimulusSet, rels: list[str], out: Path, served: bool = True) -> dict[str, dict]:
    """Copy each file to img/<sha256[:20]>.png (and to stimuli/<its set path>) after checking it against the
    manifest; ``served=False``: to stimuli/ only. Raises naming the file."""
    listed = stimset.manifest["files"]
    (out / "img").mkdir(parents=True, exist_ok=True)
    entries = {}
    for rel in rels:
        src = stimset.path(rel)
        if rel not in listed:
            raise ExportError(f"{src}: not listed in {stimset.root / 'manifest.json'} 'files'")
        try:
            data = src.read_bytes()
        except OSError as e:
            raise ExportError(f"{src}: cannot read ({e.strerror})") from e
        digest = hashlib.sha256(data).hexdigest()
        if digest != listed[rel]:
            raise ExportError(f"{src}: sha256 {digest[:12]}... differs from the manifest ({listed[rel][:12]}...): "
                              "the stimulus set changed since it was made")
        url = f"img/{digest[:20]}.png"
        inset = out / "stimuli" / rel
        if not served:
            inset.parent.mkdir(parents=True, exist_ok=True)
            inset.write_bytes(data)
            continue
        (out / url).write_bytes(data)
        # also under its set path in stimuli/ (never served): the server plans trials with the lab's design code,
        # which reads the shown images themselves (identical and near-duplicate photographs, experiment/overlap.py)
        inset.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(out / url, inset)  # same bytes: a hard link where the file system allows it
        except OSError:
            inset.write_bytes(data)
        entries[rel] = {"url": url, "sha256": digest}
    return entries


def copy_set_tables(stimset: StimulusSet, out: Path) -> None:
    """The set's manifest and tables, byte for byte (so sessions record the same manifest sha256 as the lab)."""
    dst = out / "stimuli"
    dst.mkdir(parents=True, exist_ok=True)
    for name in SET_TABLES:
        data = stimset.path(name).read_bytes()
        if name != "manifest.json" and hashlib.sha256(data).hexdigest() != stimset.manifest["files"].get(name):
            raise ExportError(f"{stimset.path(name)}: sha256 differs from the manifest")
        (dst / name).write_bytes(data)


def copy_jspsych(out: Path, node_modules: Path = NODE_MODULES) -> dict[str, str]:
    """Copy the pinned jsPsych builds into lib/; returns package -> version."""
    lib = out / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    versions = {}
    for package, files in JSPSYCH_FILES.items():
        pkg_dir = node_modules / package
        if not (pkg_dir / "package.json").is_file():
            raise ExportError(f"{pkg_dir}: jsPsych is not installed; run `make online-deps` "
                              f"(npm ci in {WEB_DIR}) once")
        versions[package] = json.loads((pkg_dir / "package.json").read_text())["version"]
        for rel in files:
            shutil.copyfile(pkg_dir / rel, lib / lib_name(package, rel))
    return versions


def write_task_files(out: Path, title: str) -> None:
    for name in TASK_FILES:
        text = (WEB_DIR / "src" / name).read_text(encoding="utf-8")
        if name == "index.html":
            import html

            text = text.replace("{{TITLE}}", html.escape(title))
        (out / name).write_text(text, encoding="utf-8")


def export_study(stimset: StimulusSet, design: Design, out: Path, online: dict, overwrite: bool = False,
                 node_modules: Path = NODE_MODULES) -> Path:
    """Write the study folder ``out``; returns the path of its study.json."""
    problems = check_set_for_design(design, stimset.units, stimset.images)
    if problems:
        raise ExportError(f"{stimset.root}: the stimulus set cannot serve design {design.path}:\n  - " + "\n  - ".join(problems))
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out}: exists and is not empty; pass --overwrite to replace it")
        if not (out / "study.json").is_file():
            raise ExportError(f"{out}: not an exported study (no study.json); refusing to delete it")
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shown = design_images(design, stimset)
        images = copy_checked(stimset, shown, tmp)
        # natural images the lab's design code reads without showing them (the shared-photograph check covers every
        # layer group of the set): into stimuli/ only, never served
        k_nat = natural_depth(design, stimset.images)
        read_only = sorted(set(shown_natural_files(stimset.images, k_nat).file) - set(shown))
        copy_checked(stimset, read_only, tmp, served=False)
        copy_set_tables(stimset, tmp)
        versions = copy_jspsych(tmp, node_modules)
        write_task_files(tmp, online["title"])
        write_study(tmp, {
            "experiment": online["experiment"] or design.name,
            "created": now_iso(),
            "design": design.raw, "design_file": str(design.path), "design_sha256": design_sha256(design.raw),
            "stimulus_set": {"set_id": stimset.set_id, "manifest_sha256": stimset.manifest_sha256,
                             "random_weights": stimset.random_weights},
            "online": online, "images": images,
            "software": {**software_versions(), **versions},
        })
    except (ExportError, ContractError, OSError):
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(out)
    return out / "study.json"
