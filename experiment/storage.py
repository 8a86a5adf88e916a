"""Session bookkeeping through ``contracts.session``: new or resumed sessions, session.json, rows.

No PsychoPy here. The rules that keep data safe live in this module:

* an existing participant+session folder is never overwritten: it is resumed or refused;
* a resumed session regenerates its trial list from what session.json recorded (design, seed,
  counterbalance index) and checks that every saved row matches that plan, and that the stimulus
  set is the one recorded (manifest sha256), before appending to the same trials.csv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from contracts.common import ContractError, software_versions
from contracts.session import (
    SESSION_FILE,
    TRIALS_FILE,
    design_sha256,
    now_iso,
    read_session_info,
    read_trials,
    session_dir,
    write_session_info,
)
from contracts.stimulus_set import StimulusSet
from experiment.config import Design, design_from_dict
from experiment.design import TrialSpec, build_trials, derive_seed, score

# Keys added to the recorded design next to the config tables (not part of the TOML schema).
DESIGN_EXTRA_KEYS = ("file", "counterbalance", "counterbalance_rule")


class SessionExists(RuntimeError):
    """The participant+session folder already holds data; resume it or pick another session number."""

    def __init__(self, folder: Path, n_done: int, status: str):
        self.folder, self.n_done, self.status = folder, n_done, status
        super().__init__(f"{folder} already exists ({status}, {n_done} trial(s) saved): never overwritten. "
                         f"Continue it with --resume, or use another session number.")


class ResumeError(RuntimeError):
    pass


def counterbalance_from_id(participant: str) -> tuple[int, str]:
    """Default counterbalance index: the number at the end of the id (P07 -> 7, sim01 -> 1).

    Number participants consecutively (P01, P02, ...) and units spread evenly over them. An id
    without a trailing number gets a stable hash-based index (spread only on average); pass
    --counterbalance to set it explicitly.
    """
    m = re.search(r"(\d+)$", participant)
    if m:
        return int(m.group(1)), "trailing number of the participant id"
    return derive_seed("counterbalance", participant) % 1000, "sha256 of the participant id (id has no trailing number)"


@dataclass
class SessionPlan:
    folder: Path
    info: dict  # session.json content (without schema fields)
    design: Design
    trials: list[TrialSpec]
    start_index: int  # first trial to run (number of trials already saved)
    resumed: bool


def recorded_design(design: Design, counterbalance: int, rule: str) -> dict:
    return {**design.raw, "file": design.path, "counterbalance": counterbalance, "counterbalance_rule": rule}


def new_session(data_dir: Path, experiment: str, participant: str, session: int, design: Design, stimset: StimulusSet,
                counterbalance: int | None = None, seed: int | None = None, simulated: str | None = None) -> SessionPlan:
    """Plan a new session; refuses (SessionExists) when the folder holds anything."""
    folder = session_dir(data_dir, experiment, participant, session)
    if folder.exists() and any(folder.iterdir()):
        info = _try_read_info(folder)
        raise SessionExists(folder, _n_saved(folder), info["status"] if info else "unreadable session.json")
    if counterbalance is None:
        counterbalance, rule = counterbalance_from_id(participant)
    else:
        rule = "given with --counterbalance"
    if seed is None:
        seed = derive_seed(design.seed, experiment, participant, session)
    trials = build_trials(design, stimset.units, stimset.images, counterbalance, seed)
    info = {
        "experiment": experiment, "participant": participant, "session": session, "status": "running",
        "started": now_iso(), "ended": None,
        "stimulus_set": {"set_id": stimset.set_id, "path": str(stimset.root.resolve()),
                         "manifest_sha256": stimset.manifest_sha256, "random_weights": stimset.random_weights,
                         "manipulation": stimset.manipulation},
        "design": recorded_design(design, counterbalance, rule),
        "design_sha256": design_sha256(design.raw),
        "seed": seed,
        "monitor": {k: design["monitor"][k] for k in ("name", "distance_cm", "width_cm", "resolution")},
        "software": software_versions(["psychopy", "pyglet"]),
        "n_trials_planned": len(trials), "n_trials_completed": 0, "frame_stats": {},
        "simulated": simulated,
        "runs": [],
    }
    return SessionPlan(folder, info, design, trials, 0, False)


def resume_session(data_dir: Path, experiment: str, participant: str, session: int, stimset: StimulusSet) -> SessionPlan:
    """Plan the continuation of a saved session, after checking it can be continued safely."""
    folder = session_dir(data_dir, experiment, participant, session)
    if not (folder / SESSION_FILE).is_file():
        raise ResumeError(f"nothing to resume: {folder / SESSION_FILE} does not exist")
    info = read_session_info(folder)
    info = {k: v for k, v in info.items() if k not in ("schema", "schema_version")}
    if info["status"] == "completed":
        raise ResumeError(f"{folder}: this session is already completed; use another session number")
    if info["stimulus_set"]["manifest_sha256"] != stimset.manifest_sha256:
        raise ResumeError(f"{folder}: the session was run with stimulus set {info['stimulus_set']['set_id']!r} "
                          f"(manifest sha256 {info['stimulus_set']['manifest_sha256'][:12]}...), not with "
                          f"{stimset.root} (manifest sha256 {stimset.manifest_sha256[:12]}...)")
    rec = info["design"]
    design = design_from_dict({k: v for k, v in rec.items() if k not in DESIGN_EXTRA_KEYS}, f"{folder / SESSION_FILE} (design)")
    design = Design(path=rec.get("file", design.path), raw=design.raw)
    trials = build_trials(design, stimset.units, stimset.images, int(rec["counterbalance"]), int(info["seed"]))
    done = _saved_trials(folder)
    check_saved_against_plan(done, trials, folder / TRIALS_FILE)
    info["n_trials_completed"] = len(done)
    info["status"] = "running"
    info["ended"] = None
    return SessionPlan(folder, info, design, trials, len(done), True)


def check_saved_against_plan(done: list[dict], trials: list[TrialSpec], path: Path) -> None:
    """Saved rows must be exactly the first trials of the plan, in order, with the same units."""
    for i, row in enumerate(done):
        if i >= len(trials):
            raise ResumeError(f"{path}: more saved trials ({len(done)}) than planned ({len(trials)})")
        t = trials[i]
        got = (int(row["trial_index"]), row["trial_type"], row["unit_0"], row["unit_1"], row["unit_2"], row["candidate_units"])
        want = (t.trial_index, t.trial_type, *t.units, ";".join(map(str, t.candidate_units)))
        if got != want:
            raise ResumeError(f"{path}: saved row {i + 1} {got} does not match the regenerated plan {want}; "
                              f"the design or the stimulus set changed, refusing to resume")


def _saved_trials(folder: Path) -> list[dict]:
    if not (folder / TRIALS_FILE).is_file():
        return []
    from contracts.session import TrialLog

    TrialLog(folder / TRIALS_FILE).close()  # drops a partial last line left by a kill mid-write
    df = read_trials(folder)
    return df.astype({"candidate_units": str}).to_dict("records")


def _n_saved(folder: Path) -> int:
    try:
        return len(read_trials(folder)) if (folder / TRIALS_FILE).is_file() else 0
    except (ContractError, ValueError):
        return -1


def _try_read_info(folder: Path) -> dict | None:
    try:
        return read_session_info(folder)
    except (ContractError, ValueError, KeyError):
        return None


def save_info(plan: SessionPlan) -> None:
    write_session_info(plan.folder, plan.info)


def trial_row(plan: SessionPlan, t: TrialSpec, stimuli: list[dict], clicks: list, assignment: list[int],
              onset_iso: str, frames: dict, paused_s: float = 0.0) -> dict:
    """One trials.csv row (exactly TRIAL_COLUMNS) for a finished trial. Click times (and so RTs) already
    exclude ``paused_s``, the time the Escape confirmation screen was up after onset."""
    correct = score(t.candidate_units, assignment)
    click_times = [c[0] for c in clicks]
    return {
        "experiment": plan.info["experiment"], "participant": plan.info["participant"], "session": plan.info["session"],
        "trial_index": t.trial_index, "block": t.block, "is_practice": t.is_practice, "is_catch": t.is_catch,
        "trial_type": t.trial_type, "layer_group": t.layer_group, "n_images": t.n_images,
        **{f"unit_{i}": t.units[i] for i in range(3)},
        **{f"layer_{i}": t.layers[i] for i in range(3)},
        **{f"channel_{i}": t.channels[i] for i in range(3)},
        "candidate_units": list(t.candidate_units), "assignment": list(assignment),
        **{f"correct_{i}": correct[i] for i in range(3)},
        "n_correct": sum(correct), "trial_correct": all(correct),
        "rt_first_click": round(click_times[0], 4) if click_times else None,
        "rt_confirm": round(click_times[-1], 4) if click_times else None,
        "paused_s": round(paused_s, 4),
        "clicks": clicks, "stimuli": stimuli,
        "frames": frames["frames"], "frames_dropped": frames["frames_dropped"],
        "frame_interval_mean_ms": frames["frame_interval_mean_ms"], "frame_interval_sd_ms": frames["frame_interval_sd_ms"],
        "onset": onset_iso,
    }
