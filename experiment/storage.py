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
    display_sha256,
    now_iso,
    read_session_info,
    read_trials,
    session_dir,
    write_session_info,
)
from contracts.stimulus_set import StimulusSet
from experiment.config import Design, design_from_dict
from experiment.design import (
    PRACTICE_RULE,
    TrialSpec,
    build_trials,
    derive_seed,
    excluded_pairs,
    natural_depth,
    repetition_report,
    reserved_practice_units,
    score,
    shared_image_report,
)
from experiment.overlap import image_fingerprints, shown_natural_files

# Keys added to the recorded design next to the config tables (not part of the TOML schema).
DESIGN_EXTRA_KEYS = ("file", "counterbalance", "counterbalance_rule", "reference_side")
# Design keys added after sessions were first recorded, with the behaviour those sessions had: a
# resumed old session regenerates exactly the trial list it started with.
_OLD_SESSION_DEFAULTS = {"design": {"shared_images": "allow", "participants_planned": 0, "counterbalance": "participant_number",
                                    "practice_units": "main"},
                         "participant": {"fields": []},
                         "display": {"reference_side": "left"}}


class SessionExists(RuntimeError):
    """The participant+session folder already holds data; resume it or pick another session number."""

    def __init__(self, folder: Path, n_done: int, status: str):
        self.folder, self.n_done, self.status = folder, n_done, status
        what = ("Use another session number (a completed session cannot be continued)." if status == "completed"
                else "Continue it with --resume, or use another session number.")
        super().__init__(f"{folder} already exists ({status}, {n_done} trial(s) saved): never overwritten. {what}")


class ResumeError(RuntimeError):
    pass


class NothingSaved(ResumeError):
    """--resume of a session that never saved session.json nor a trial: it can simply start."""


class CounterbalanceTaken(ValueError):
    """Another participant of the experiment already has this counterbalance index."""


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


def used_counterbalance(data_dir: Path, experiment: str) -> dict[int, set[str]]:
    """Counterbalance index -> participants that have a session of ``experiment`` with it (from their
    session.json; unreadable ones are skipped: they cannot be resumed either)."""
    used: dict[int, set[str]] = {}
    for f in sorted((Path(data_dir) / experiment).glob("sub-*_ses-*/" + SESSION_FILE)):
        info = _try_read_info(f.parent)
        if info and isinstance(info.get("design", {}).get("counterbalance"), int):
            used.setdefault(info["design"]["counterbalance"], set()).add(info["participant"])
    return used


def assign_counterbalance(data_dir: Path, experiment: str, participant: str, design: Design, given: int | None = None,
                          allow_duplicate: bool = False) -> tuple[int, str]:
    """The participant's counterbalance index and the rule that chose it (recorded in session.json).

    ``given`` (--counterbalance) is refused when another participant of the experiment has it, unless
    ``allow_duplicate``. Otherwise ``design.counterbalance``: ``next_free`` gives the participant's
    own earlier index, else the lowest index no participant has (within ``participants_planned``
    when set; past it, the least used one); ``participant_number`` the id's trailing number.
    """
    used = used_counterbalance(data_dir, experiment)
    if given is not None:
        others = sorted(used.get(given, set()) - {participant})
        if others and not allow_duplicate:
            raise CounterbalanceTaken(
                f"counterbalance index {given} is already used by participant(s) {', '.join(others)} of experiment "
                f"{experiment!r} in {data_dir}: they would see the same units and triplets. Leave --counterbalance out "
                f"to get the next free index, or pass --allow-duplicate-counterbalance if this is intended")
        return given, "given with --counterbalance" + (" (duplicate allowed)" if others else "")
    d = design["design"]
    if d["counterbalance"] == "participant_number":
        return counterbalance_from_id(participant)
    mine = sorted(k for k, ps in used.items() if participant in ps)
    if mine:
        return mine[0], "the participant's earlier session"
    planned = d["participants_planned"]
    limit = planned or (max(used, default=-1) + 2)
    free = [k for k in range(limit) if k not in used]
    if free:
        return free[0], f"lowest index no participant of the experiment has (data folder {Path(data_dir) / experiment})"
    k = min(range(planned), key=lambda i: (len(used.get(i, ())), i))
    return k, f"all {planned} planned indices in use: the least used one"


def reference_side(design: Design, counterbalance: int) -> str:
    """Which side the reference rows are on for this participant (``display.reference_side``)."""
    side = design["display"]["reference_side"]
    return side if side != "counterbalanced" else ("left" if counterbalance % 2 == 0 else "right")


@dataclass
class SessionPlan:
    folder: Path
    info: dict  # session.json content (without schema fields)
    design: Design
    trials: list[TrialSpec]
    start_index: int  # first trial to run (number of trials already saved)
    resumed: bool
    set_aside: tuple[Path, ...] = ()  # leftovers of a start that saved no trial, renamed before this one starts


def set_fingerprints(design: Design, stimset: StimulusSet) -> dict | None:
    """sha256 (manifest) and difference hash of every natural image the design can show, for the
    shared-image rule and its report."""
    files = list(shown_natural_files(stimset.images, natural_depth(design, stimset.images)).file)
    return image_fingerprints(stimset.root, stimset.manifest.get("files", {}), files)


def practice_units_record(design: Design, stimset: StimulusSet, fingerprints: dict | None) -> dict:
    """session.json ``practice_units``: the design's choice, the rule, and the reserved units per group."""
    reserved = reserved_practice_units(design, stimset.units,
                                       excluded_pairs(design, stimset.units, stimset.images, fingerprints))
    return {"mode": design["design"]["practice_units"], "units": reserved,
            "rule": PRACTICE_RULE if reserved else "practice trials use the main trials' units"}


def recorded_design(design: Design, counterbalance: int, rule: str) -> dict:
    return {**design.raw, "file": design.path, "counterbalance": counterbalance, "counterbalance_rule": rule,
            "reference_side": reference_side(design, counterbalance)}


def new_session(data_dir: Path, experiment: str, participant: str, session: int, design: Design, stimset: StimulusSet,
                counterbalance: int | None = None, seed: int | None = None, simulated: str | None = None,
                allow_duplicate_counterbalance: bool = False, participant_info: dict | None = None) -> SessionPlan:
    """Plan a new session; refuses (SessionExists) when the folder holds anything, and (CounterbalanceTaken)
    a given counterbalance index another participant has (see ``assign_counterbalance``)."""
    folder = session_dir(data_dir, experiment, participant, session)
    leftovers = _entries(folder)
    set_aside: tuple[Path, ...] = ()
    if leftovers:
        info = _try_read_info(folder)
        status = info["status"] if info else ("no session.json" if not (folder / SESSION_FILE).exists()
                                              else "unreadable session.json")
        if saved_row_count(folder) > 0 or info is not None:
            raise SessionExists(folder, _n_saved(folder), status)  # a readable session.json: resume it
        # no readable session.json and no saved trial (e.g. a kill during the first session.json write left
        # only session.json.tmp): nothing was recorded, so it starts cleanly; its files are kept under
        # another name (set_aside_leftovers)
        set_aside = tuple(p for p in (folder / SESSION_FILE, folder / (SESSION_FILE + ".tmp"), folder / TRIALS_FILE)
                          if p.exists())
    counterbalance, rule = assign_counterbalance(data_dir, experiment, participant, design, counterbalance,
                                                 allow_duplicate_counterbalance)
    if seed is None:
        seed = derive_seed(design.seed, experiment, participant, session)
    fingerprints = set_fingerprints(design, stimset)
    trials = build_trials(design, stimset.units, stimset.images, counterbalance, seed, fingerprints)
    info = {
        "experiment": experiment, "participant": participant, "session": session, "mode": "lab",
        "participant_info": participant_info if participant_info is not None else
        {f: None for f in design["participant"]["fields"]},
        "status": "running",
        "started": now_iso(), "ended": None,
        "stimulus_set": {"set_id": stimset.set_id, "path": str(stimset.root.resolve()),
                         "manifest_sha256": stimset.manifest_sha256, "random_weights": stimset.random_weights,
                         "manipulation": stimset.manipulation},
        "design": recorded_design(design, counterbalance, rule),
        "design_sha256": design_sha256(design.raw),
        "display_sha256": display_sha256(design.raw),
        "seed": seed,
        "monitor": {k: design["monitor"][k] for k in ("name", "distance_cm", "width_cm", "resolution")},
        "software": software_versions(["psychopy", "pyglet"]),
        "n_trials_planned": len(trials), "n_trials_completed": 0, "frame_stats": {},
        "shared_images": shared_image_report(design, stimset.units, stimset.images, fingerprints),
        "repetition": repetition_report(trials),
        "practice_units": practice_units_record(design, stimset, fingerprints),
        "simulated": simulated,
        "instructions_s": None,  # seconds on the instruction screen, set when it is left (session schema 1.5)
        "runs": [],
    }
    return SessionPlan(folder, info, design, trials, 0, False, set_aside)


def resume_session(data_dir: Path, experiment: str, participant: str, session: int, stimset: StimulusSet) -> SessionPlan:
    """Plan the continuation of a saved session, after checking it can be continued safely."""
    folder = session_dir(data_dir, experiment, participant, session)
    if not (folder / SESSION_FILE).is_file():
        if saved_row_count(folder) == 0:
            raise NothingSaved(f"nothing to resume in {folder}: no session.json and no saved trial")
        raise ResumeError(f"cannot resume {folder}: {SESSION_FILE} is missing but {TRIALS_FILE} holds trials; "
                          f"refusing to guess how they were run")
    info = read_session_info(folder)
    info = {k: v for k, v in info.items() if k not in ("schema", "schema_version")}
    if info["status"] == "completed":
        raise ResumeError(f"{folder}: this session is already completed; use another session number")
    if info["stimulus_set"]["manifest_sha256"] != stimset.manifest_sha256:
        raise ResumeError(f"{folder}: the session was run with stimulus set {info['stimulus_set']['set_id']!r} "
                          f"(manifest sha256 {info['stimulus_set']['manifest_sha256'][:12]}...), not with "
                          f"{stimset.root} (manifest sha256 {stimset.manifest_sha256[:12]}...)")
    rec = info["design"]
    config = {k: v for k, v in rec.items() if k not in DESIGN_EXTRA_KEYS}
    for table, keys in _OLD_SESSION_DEFAULTS.items():  # recorded before these keys existed: what was done then
        config[table] = {**{k: v for k, v in keys.items() if k not in config.get(table, {})}, **config.get(table, {})}
    design = design_from_dict(config, f"{folder / SESSION_FILE} (design)")
    design = Design(path=rec.get("file", design.path), raw=design.raw)
    trials = build_trials(design, stimset.units, stimset.images, int(rec["counterbalance"]), int(info["seed"]),
                          set_fingerprints(design, stimset))
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


def _entries(folder: Path) -> list[Path]:
    """What a session folder holds besides the lock note of its writer."""
    from experiment.session_lock import LOCK_FILE

    return [p for p in folder.iterdir() if p.name != LOCK_FILE] if folder.is_dir() else []


def saved_row_count(folder: Path) -> int:
    """Complete data rows in trials.csv (a torn last line without its newline does not count)."""
    try:
        data = (folder / TRIALS_FILE).read_bytes()
    except FileNotFoundError:
        return 0
    return max(data.count(b"\n") - 1, 0)


def set_aside_leftovers(plan: SessionPlan) -> list[Path]:
    """Rename the files of a start that saved no trial (``<name>.restarted-<time>``) so the new start
    writes fresh ones and nothing is deleted. Returns the new names."""
    stamp = now_iso().replace(":", "").replace("+", "p")
    moved = []
    for p in plan.set_aside:
        if p.exists():
            target = p.with_name(f"{p.name}.restarted-{stamp}")
            p.rename(target)
            moved.append(target)
    return moved


def _n_saved(folder: Path) -> int:
    return saved_row_count(folder)


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
