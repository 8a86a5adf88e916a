"""``fvmatch-online jatos-export``: an exported study folder -> a JATOS study archive (.jzip) JATOS imports.

A .jzip is a zip of the study assets folder (``<dirName>/``) and a ``.jas`` file, the study properties as JSON
(``{"version": "3", "data": {uuid, title, dirName, componentList, batchList, ...}}``; JATOS docs, "JATOS Study
Archive (JZIP)"). JATOS runs no Python, so the trial lists are made here, with the lab's design code, for
``slots`` participants: slot k is counterbalance index k with the seed the lab's rule gives the pseudo participant
``jatos-slot-<k>``. The page takes the next slot from the JATOS batch session, runs that plan, and appends every
event and trial to the JATOS result as one JSON line (``jatos.appendResultData``) as it happens;
``online.jatos_import`` turns those lines into session folders, checking each against the same plan.

The archive holds what the built-in server serves (task, jsPsych, images by content hash) plus ``plans/``:
never study.json or the stimulus tables, whose names reveal units. Practice trials' answers are in the plans (the
page gives practice feedback without a server); main and catch trials' answers are not.
"""

from __future__ import annotations

import json
import uuid
import zipfile
from pathlib import Path

from contracts.common import sha256_json
from experiment.design import build_trials, correct_assignment, derive_seed
from experiment.storage import set_fingerprints
from online.sessions import SESSION_NUMBER, OnlineStudy

JAS_VERSION = "3"
PLANS_DIR = "plans"
PLAN_INDEX = "plans/index.json"
TASK_FILES = ("task.js", "task.css")
_NS = uuid.UUID("6f1c3a52-8e0b-4c55-9d0e-2f6b7a1d9c11")  # fvmatch's namespace for the archive's uuids


class JatosExportError(RuntimeError):
    pass


def slot_seed(study: OnlineStudy, slot: int) -> int:
    """The lab's seed rule (design seed, experiment, participant, session) for the slot's pseudo participant."""
    return derive_seed(study.design.seed, study.experiment, f"jatos-slot-{slot:03d}", SESSION_NUMBER)


def slot_rule(slot: int) -> str:
    return f"JATOS slot {slot} of the study package (fvmatch-online jatos-export): counterbalance index {slot}"


def plan_id(plan: dict) -> str:
    """Fingerprint of what the page shows for a slot; the import recomputes it from the study and compares."""
    return sha256_json({k: plan[k] for k in ("slot", "counterbalance", "seed", "trials", "practice_answers")})


def slot_plan(study: OnlineStudy, slot: int, fingerprints: dict | None = None) -> dict:
    """The page's plan for one slot: the lab's trial list for counterbalance ``slot`` and its seed."""
    seed = slot_seed(study, slot)
    if fingerprints is None:
        fingerprints = set_fingerprints(study.design, study.stimset)
    trials = build_trials(study.design, study.stimset.units, study.stimset.images, slot, seed, fingerprints)
    plan = {"slot": slot, "counterbalance": slot, "seed": seed, **study.page_plan(trials),
            "practice_answers": {str(t.trial_index): correct_assignment(t.candidate_units) for t in trials if t.is_practice}}
    plan["plan_id"] = plan_id(plan)
    return plan


def jas(study: OnlineStudy, dir_name: str, title: str) -> dict:
    """The study properties (.jas, version 3): one reloadable component (a reload resumes), one batch."""
    key = f"{study.experiment}:{study.study['design_sha256']}:{study.study['stimulus_set']['manifest_sha256']}"
    uid = lambda what: str(uuid.uuid5(_NS, f"{key}:{what}"))  # noqa: E731  (a re-export updates the same JATOS study)
    return {"version": JAS_VERSION, "data": {
        "uuid": uid("study"), "title": title,
        "description": f"fvmatch matching task, experiment {study.experiment}, stimulus set "
                       f"{study.study['stimulus_set']['set_id']}" + (" (RANDOM WEIGHTS)" if study.study["stimulus_set"]["random_weights"] else ""),
        "groupStudy": False, "linearStudy": False, "allowPreview": False, "dirName": dir_name,
        "comments": "Made by fvmatch-online jatos-export; import the results with fvmatch-online jatos-import.",
        "jsonData": None, "endRedirectUrl": study.config["completion_url"], "studyEntryMsg": None,
        "componentList": [{"uuid": uid("component"), "title": "Matching task", "htmlFilePath": "index.html",
                           "reloadable": True, "active": True, "comments": "", "jsonData": None}],
        "batchList": [{"uuid": uid("batch"), "title": "Default", "active": True, "maxActiveMembers": None,
                       "maxTotalMembers": None, "maxTotalWorkers": None,
                       "allowedWorkerTypes": ["PersonalSingle", "PersonalMultiple", "GeneralSingle", "GeneralMultiple",
                                              "MTurk", "Jatos"],
                       "comments": None, "jsonData": None}],
    }}


def jatos_index_html(study_dir: Path) -> str:
    """The task page with jatos.js (served by JATOS next to the component) loaded before the task."""
    html = (study_dir / "index.html").read_text(encoding="utf-8")
    tag = '  <script src="task.js"></script>'
    if tag not in html:
        raise JatosExportError(f"{study_dir / 'index.html'}: not the task page of fvmatch-online export")
    return html.replace(tag, '  <script src="jatos.js"></script>\n' + tag)


def export_jatos(study_dir: Path, out: Path, slots: int, overwrite: bool = False) -> Path:
    """Write the .jzip ``out`` for the exported study ``study_dir``; returns ``out``."""
    if not 1 <= slots <= 1000:
        raise JatosExportError(f"--slots must be 1..1000, got {slots}")
    if out.exists() and not overwrite:
        raise JatosExportError(f"{out}: exists; pass --overwrite to replace it")
    study = OnlineStudy(study_dir, study_dir / ".unused-data")  # nothing is written to the data folder
    dir_name = f"fvmatch_{study.experiment}"
    fingerprints = set_fingerprints(study.design, study.stimset)
    tmp = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{dir_name}.jas", json.dumps(jas(study, dir_name, study.config["title"]), indent=1))
        z.writestr(f"{dir_name}/index.html", jatos_index_html(study_dir))
        for rel in (*TASK_FILES, *sorted(p.relative_to(study_dir).as_posix() for d in ("lib", "img")
                                         for p in (study_dir / d).iterdir())):
            z.write(study_dir / rel, f"{dir_name}/{rel}")
        ids = {}
        for k in range(slots):
            plan = slot_plan(study, k, fingerprints)
            ids[k] = plan["plan_id"]
            z.writestr(f"{dir_name}/{PLANS_DIR}/slot-{k:03d}.json", json.dumps(plan, separators=(",", ":")))
        z.writestr(f"{dir_name}/{PLAN_INDEX}", json.dumps({
            "n_slots": slots, "experiment": study.experiment, "completion_url": study.config["completion_url"],
            "design_sha256": study.study["design_sha256"], "plan_ids": ids}))
    tmp.replace(out)
    return out
