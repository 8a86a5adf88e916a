"""The PsychoPy session: window, instructions, practice with feedback, blocks with breaks, trials.

PsychoPy's ``visual`` needs a display, so it is imported inside ``run_session`` only. Data safety:
every finished trial is appended to trials.csv and fsync'd (``contracts.session.TrialLog``) before
the next trial starts; session.json is rewritten atomically after each trial; PsychoPy's
``ExperimentHandler`` wide CSV (``psychopy/``) is rewritten after each trial with collision method
'overwrite' and never autosaved (no ``_1.csv`` duplicates), and gets only fields without quotes.

Simulated participants (``--simulate``) press the real (emulated) pyglet mouse button at the
screen position of the row they choose; the same polling code then reads the click as for a person.

The window's screens live in ``experiment.screens`` (text, input) and ``experiment.trial_screen``
(trials, feedback); frame-timing records in ``experiment.frame_timing``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from contracts.session import PSYCHOPY_DIR, TRIALS_FILE, TrialLog, now_iso
from contracts.stimulus_set import StimulusSet
from experiment.frame_timing import add_trial, merge_frame_stats, new_run_totals
from experiment.monitor import measure_refresh, open_monitor, runtime_info
from experiment.screens import INSTRUCTIONS, SessionAborted, instructions  # noqa: F401  (re-exported)
from experiment.simulate import SimulatedParticipant
from experiment.storage import SessionPlan, save_info
from experiment.trial_screen import TrialUI

_UI = TrialUI  # the name tests and older callers use

# Handler columns: scalars only (saveAsWideText does not escape quotes, so no JSON here).
HANDLER_FIELDS = ("experiment", "participant", "session", "trial_index", "block", "is_practice", "is_catch",
                  "trial_type", "layer_group", "n_images", "unit_0", "unit_1", "unit_2", "candidate_units",
                  "assignment", "correct_0", "correct_1", "correct_2", "n_correct", "trial_correct",
                  "rt_first_click", "rt_confirm", "paused_s", "frames", "frames_dropped", "onset")


def run_session(plan: SessionPlan, stimset: StimulusSet, sim: SimulatedParticipant | None = None,
                screenshot_dir: Path | None = None, sim_escape_after: int | None = None,
                max_trials: int | None = None, sim_hang_after: int | None = None, check_timing: bool = True) -> str:
    """Run the remaining trials of ``plan``; returns the final status (completed | aborted | running).

    ``max_trials`` stops after that many trials in this run, leaving the session 'running' (for tests
    of resume); ``sim_escape_after`` makes the simulated participant press Escape and confirm after that
    many trials of this run (for tests of the abort path); ``sim_hang_after`` makes it stop clicking
    after that many trials (the window keeps running: for tests that kill the process mid-session).
    """
    from psychopy import core, data, event, logging, monitors, visual  # noqa: F401  (needs a display)

    design = plan.design
    mon_cfg, disp = design["monitor"], design["display"]
    mon, monitor_center = open_monitor(mon_cfg, design.path)  # ValueError before anything is written
    psydir = plan.folder / PSYCHOPY_DIR
    psydir.mkdir(parents=True, exist_ok=True)
    participant, experiment = plan.info["participant"], plan.info["experiment"]
    stem = f"{participant}_{experiment}_{data.getDateStr(format='%Y-%m-%d_%H%M%S')}"
    logfile = logging.LogFile(str(psydir / f"{stem}.log"), level=logging.EXP, filemode="w")
    # A simulated session runs unpaced, so PsychoPy's dropped-frame warnings are meaningless there.
    logging.console.setLevel(logging.ERROR if sim is not None else logging.WARNING)

    run_record = {"started": now_iso(), "ended": None, "start_index": plan.start_index, "status": "running",
                  "psychopy_files": stem, "simulated": sim.policy if sim else None}
    plan.info.setdefault("runs", []).append(run_record)
    plan.info["status"] = "running"
    save_info(plan)

    run_record["monitor_center"] = monitor_center
    if not monitor_center["loaded"] and sim is None:
        print(f"fvmatch-session: note: {monitor_center['note']} (see README: Monitor Center)", file=sys.stderr)
    # The refresh rate is measured below (measure_refresh), against the design's monitor.refresh_hz.
    win = visual.Window(size=list(mon_cfg["resolution"]), monitor=mon, units="deg", fullscr=mon_cfg["fullscreen"],
                        screen=mon_cfg["screen"], color=disp["background"], colorSpace="rgb", allowGUI=False,
                        checkTiming=False, waitBlanking=sim is None)
    if [int(v) for v in win.size] != [int(v) for v in mon_cfg["resolution"]]:
        # Sizes in degrees are computed from monitor.resolution: a different real size would distort them.
        size = [int(v) for v in win.size]
        win.close()
        raise ValueError(f"{design.path}: monitor.resolution is {mon_cfg['resolution']} but the window opened at "
                         f"{size} px (fullscreen uses the screen's own resolution): set monitor.resolution to it")
    run_record["window_px"] = [int(v) for v in win.size]
    why_not = ("simulated participant (runs unpaced)" if sim is not None else
               "--no-timing-check" if not check_timing else "")
    refresh, warning = measure_refresh(win, mon_cfg["refresh_hz"], attempt=check_timing and sim is None, why_not=why_not)
    if warning:
        print(f"fvmatch-session: WARNING: {warning}", file=sys.stderr)
    run_record["refresh"] = refresh
    run_record["frame_period_ms"] = refresh["frame_period_ms"]  # the period dropped frames are judged against
    run_record["refresh_measured"] = refresh["measured_hz"] is not None
    run_record["runtime_info"] = runtime_info(win)
    exp = data.ExperimentHandler(name=experiment, dataFileName=str(psydir / stem), savePickle=False, saveWideText=False, autoLog=False)
    log = TrialLog(plan.folder / TRIALS_FILE)
    ui = TrialUI(win, mon, disp, sim, screenshot_dir, sim_escape_after,
             reference_side=plan.info["design"].get("reference_side", "left"))
    ui.sim_hang_after = sim_hang_after
    ui.sim_idle = sim_hang_after is not None and sim_hang_after <= 0  # 0: idle from the first trial on
    status = "running"
    totals = new_run_totals()  # this run
    try:
        status = _run_trials(plan, stimset, ui, log, exp, psydir / f"{stem}.csv", totals, max_trials)
    except SessionAborted:
        status = "aborted"
        if ui.aborted_trial is not None:
            run_record["aborted_trial"] = ui.aborted_trial  # the clicks of the trial that Escape ended
    finally:
        log.close()
        if exp.entries:
            _save_handler(exp, psydir / f"{stem}.csv")
        exp.abort()  # nothing left to autosave at exit
        plan.info["frame_stats"] = merge_frame_stats(plan.info.get("frame_stats") or {}, totals)
        plan.info["status"] = status
        plan.info["ended"] = now_iso() if status != "running" else None
        run_record.update(ended=now_iso(), status=status, end_index=plan.start_index + totals["trials"])
        save_info(plan)
        if status == "completed" or status == "aborted":
            try:
                ui.message(("Thank you! The session is over." if status == "completed" else "The session was ended.")
                           + "\n\nPlease let the experimenter know.", button="Close", min_s=1.0)
            except SessionAborted:
                pass
        ui.clicks.close()
        win.close()
        logging.flush()
        logging.root.removeTarget(logfile)
    return status


def _run_trials(plan: SessionPlan, stimset: StimulusSet, ui: TrialUI, log: TrialLog, exp, handler_csv: Path,
                totals: dict, max_trials: int | None) -> str:
    trials = plan.trials
    n_total = len(trials)
    n_blocks = max(t.block for t in trials)
    if plan.start_index == 0:
        took = ui.message(instructions(ui.reference_side), button="Start", screenshot="instructions")
        plan.info["instructions_s"] = round(took, 3)  # session schema 1.5: the exclusion rules read it
        save_info(plan)
        if trials and trials[0].is_practice:
            ui.message(f"First, {sum(t.is_practice for t in trials)} practice trials. After each one you see which "
                       "pairs were right (green) and which were wrong (red).", button="Start practice")
    else:
        ui.message(f"Welcome back. The session continues with trial {plan.start_index + 1} of {n_total}.\n\n"
                   f"Reminder: click a row on the {ui.candidate_side}, then the row on the {ui.reference_side} that shows "
                   "the same unit; "
                   "click Confirm when all three rows are paired.", button="Continue")
    prev_block = trials[plan.start_index - 1].block if plan.start_index > 0 else None
    done_this_run = 0
    for t in trials[plan.start_index:]:
        if max_trials is not None and done_this_run >= max_trials:
            return "running"
        if prev_block is not None and t.block != prev_block:
            if prev_block == 0:
                ui.message("Practice is over; there is no more feedback from now on.\n\n"
                           f"The experiment has {n_blocks} blocks with a break after each.", button="Start")
            else:
                started = now_iso()
                took = ui.message(f"Block {prev_block} of {n_blocks} done: {t.trial_index} of {n_total} trials finished.\n\n"
                                  "Take a short break. Continue when you are ready.", button="Continue",
                                  min_s=plan.design["timing"]["min_break_s"], screenshot="break")
                plan.info.setdefault("breaks", []).append({"after_block": prev_block, "before_trial": t.trial_index,
                                                           "started": started, "duration_s": round(took, 3)})
        prev_block = t.block
        row = ui.run_trial(t, stimset, plan, progress=f"Trial {t.trial_index + 1} of {n_total}")
        row["_n_intervals"] = ui.last_n_intervals
        log.append({k: v for k, v in row.items() if not k.startswith("_")})  # flushed and fsync'd before anything else happens
        done_this_run += 1
        totals["trials"] = done_this_run
        plan.info["n_trials_completed"] = t.trial_index + 1
        save_info(plan)
        for k in HANDLER_FIELDS:
            v = row[k]
            exp.addData(k, ";".join(map(str, v)) if isinstance(v, list) else int(v) if isinstance(v, bool) else v)
        exp.nextEntry()
        _save_handler(exp, handler_csv)
        add_trial(totals, row, row["_n_intervals"])
        if ui.sim_hang_after is not None and done_this_run >= ui.sim_hang_after:
            ui.sim_idle = True
        if ui.sim_escape_after is not None and done_this_run >= ui.sim_escape_after:
            ui.sim_press_escape()
    return "completed"


def _save_handler(exp, path: Path) -> None:
    """Rewrite the handler's wide CSV: written to a new file, then renamed over the old one (atomic, and
    no 'Data file ... will be overwritten' warning, which PsychoPy logs for any existing target)."""
    tmp = path.with_name(path.stem + ".partial.csv")
    if tmp.exists():
        tmp.unlink()  # left by a kill mid-write
    exp.saveAsWideText(str(tmp), delim=",", fileCollisionMethod="overwrite")
    os.replace(tmp, path)
