"""Finished lab sessions on disk, written with the lab's own storage code (the PsychoPy window left out), for tests
that need sessions without running one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from contracts.session import TRIALS_FILE, TrialLog, now_iso
from contracts.stimulus_set import load_stimulus_set
from experiment.config import load_design
from experiment.design import correct_assignment
from experiment.storage import new_session, save_info, trial_row

FRAMES = {"frames": 100, "frames_dropped": 0, "frame_interval_mean_ms": 16.7, "frame_interval_sd_ms": 0.2}


def finished_lab_session(data: Path, experiment: str, pid: str, k: int, fixture_set: Path,
                         assignment: Callable | None = None, onset: str | None = None,
                         finish_info: Callable[[], dict] | None = None,
                         older: tuple[str, str] | None = None) -> Path:
    """A completed session of the demo design (counterbalance ``k``). ``assignment``: trial -> the pairing answered
    (default: the correct one); ``onset``: every trial's onset (default: the time it is written); ``finish_info``:
    session.json fields to set once the trials are written; ``older`` = (field, schema version): session.json
    rewritten as fvmatch wrote it before that field existed."""
    plan = new_session(data, experiment, pid, 1, load_design("demo"), load_stimulus_set(fixture_set), counterbalance=k)
    plan.folder.mkdir(parents=True)
    with TrialLog(plan.folder / TRIALS_FILE) as log:
        for t in plan.trials:
            a = assignment(t) if assignment else correct_assignment(t.candidate_units)
            log.append(trial_row(plan, t, [], [[1.0, "confirm", None]], a, onset or now_iso(), FRAMES))
    plan.info.update(status="completed", n_trials_completed=len(plan.trials), **(finish_info() if finish_info else {}))
    save_info(plan)
    if older:
        field, version = older
        p = plan.folder / "session.json"
        info = json.loads(p.read_text())
        info.pop(field)
        info["schema_version"] = version
        p.write_text(json.dumps(info))
    return plan.folder
