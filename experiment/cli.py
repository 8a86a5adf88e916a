"""``fvmatch-session``: Run a participant session of the matching task (PsychoPy)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EPILOG = """examples:
  # a participant in the lab (a dialog asks for participant id and session number)
  fvmatch-session --stimuli data/stimuli/study1 --design default --experiment study1

  # the same without the dialog; each new participant gets the next free counterbalance index
  fvmatch-session --stimuli data/stimuli/study1 --experiment study1 --participant P07 --session 1 --no-dialog

  # continue an interrupted session after the last saved trial, in the same order
  fvmatch-session --stimuli data/stimuli/study1 --experiment study1 --participant P07 --session 1 --resume

  # a simulated participant (correct on 80% of trials) in the real window, at full speed
  fvmatch-session --stimuli data/stimuli/demo --design demo --experiment demo --participant sim01 \\
      --session 1 --simulate noisy:0.8 --data-dir data/sessions --no-dialog

  # check a stimulus set against a design, and write the trial list as a PsychoPy conditions file
  # (the list depends on experiment, participant and session: give the ones the session will use)
  fvmatch-session --stimuli data/stimuli/study1 --experiment study1 --participant P07 --session 1 \
      --check-only --export-conditions P07.csv

data: data/sessions/<experiment>/sub-<participant>_ses-<NN>/{session.json,trials.csv,psychopy/}
exit status: 0 completed (or checks passed), 2 bad input or refused, 3 aborted with Escape
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fvmatch-session", description="Run a participant session of the matching task (PsychoPy).",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stimuli", required=True, metavar="DIR", help="stimulus set folder (contracts/stimulus_set.py)")
    p.add_argument("--design", default="default", metavar="NAME|FILE",
                   help="shipped design name (default, demo) or a TOML file (default: %(default)s)")
    p.add_argument("--experiment", metavar="NAME", help="experiment name, the data subfolder (default: the design's name)")
    p.add_argument("--participant", metavar="ID", help="participant id: letters, digits, '-', '_' (asked in a dialog when missing)")
    p.add_argument("--session", type=int, metavar="N", help="session number 0-999 (default 1)")
    p.add_argument("--data-dir", default="data/sessions", metavar="DIR", help="root of session data (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue an existing session after its last saved trial (with the design, seed and "
                        "counterbalance index recorded in its session.json)")
    p.add_argument("--counterbalance", type=int, metavar="K",
                   help="counterbalance index: which triplets of units and which screen side this participant gets "
                        "(default: design.counterbalance, the lowest index no participant of the experiment has)")
    p.add_argument("--allow-duplicate-counterbalance", action="store_true",
                   help="accept a --counterbalance index another participant of the experiment already has")
    p.add_argument("--seed", type=int, help="session seed (default: derived from design seed, experiment, participant, session)")
    p.add_argument("--simulate", metavar="POLICY", help="simulated participant: random, oracle, noisy:P (correct with probability P) or features[:LAYER] (image-computable)")
    p.add_argument("--no-dialog", action="store_true", help="never open a dialog (fail instead of asking)")
    p.add_argument("--screenshots", metavar="DIR", help="save screenshots (instructions, one trial per type, feedback, break) to DIR")
    p.add_argument("--no-timing-check", action="store_true",
                   help="skip PsychoPy's refresh-rate check at window opening (virtual displays such as Xvfb; "
                        "always skipped for simulated participants)")
    p.add_argument("--check-only", action="store_true", help="check the stimulus set and the design, print the plan, do not run")
    p.add_argument("--export-conditions", metavar="CSV", help="write the trial list as a PsychoPy conditions file")
    p.add_argument("--max-trials", type=int, help=argparse.SUPPRESS)  # tests: stop after N trials of this run
    p.add_argument("--sim-escape-after", type=int, help=argparse.SUPPRESS)  # tests: simulated Escape + 'y'
    p.add_argument("--sim-hang-after", type=int, help=argparse.SUPPRESS)  # tests: simulated participant stops clicking
    return p


def _fail(msg: str, code: int = 2) -> int:
    print(f"fvmatch-session: error: {msg}", file=sys.stderr)
    return code


def _ask_ids(experiment: str, participant: str | None, session: int | None,
             fields: list[str] = ()) -> tuple[str, int, dict] | None:
    """Participant id, session number and the design's optional participant fields (empty -> None)."""
    from psychopy import gui

    info = {"participant": participant or "", "session": session if session is not None else 1, **{f: "" for f in fields}}
    dlg = gui.DlgFromDict(info, title=f"fvmatch: {experiment}", order=["participant", "session", *fields])
    if not dlg.OK:
        return None
    extra = {f: (str(info[f]).strip() or None) for f in fields}
    return str(info["participant"]).strip(), int(info["session"]), extra


def _ask_resume(err) -> bool:
    from psychopy import gui

    dlg = gui.Dlg(title="Session exists")
    dlg.addText(f"{err.folder.name} already has data ({err.status}, {err.n_done} trials saved).")
    dlg.addText("It is never overwritten. OK = continue it after the last saved trial; Cancel = quit.")
    dlg.show()
    return bool(dlg.OK)


def _die_with_parent() -> None:
    """Under ``tools/with-display.sh`` (which sets FVMATCH_DIE_WITH_PARENT=1): end when the process that
    started this one ends, even by SIGKILL, so no session keeps writing while a resume starts (the session
    lock refuses that second writer anyway). Every finished trial is already fsync'd. Linux only."""
    if os.environ.get("FVMATCH_DIE_WITH_PARENT") != "1" or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # a process of its own (the console script), not a call from Python code
        _die_with_parent()
    t0 = time.perf_counter()
    from contracts.common import ContractError
    from contracts.session import session_dir, validate_id
    from contracts.stimulus_set import load_stimulus_set
    from experiment.config import ConfigError, load_design
    from experiment.simulate import parse_policy
    from experiment.session_lock import SessionLock, SessionLocked, describe_holder

    try:
        policy = parse_policy(args.simulate) if args.simulate else None
        design = load_design(args.design)
        experiment = validate_id(design.name if args.experiment is None else args.experiment, "experiment name")
        if args.counterbalance is not None and args.counterbalance < 0:
            raise ValueError(f"--counterbalance must be >= 0, got {args.counterbalance}")
    except (ConfigError, ValueError) as e:
        return _fail(str(e))

    participant, session = args.participant, args.session
    fields = design["participant"]["fields"]
    participant_info = {f: None for f in fields}  # not asked (no dialog): unknown
    if participant is None:
        if args.no_dialog or policy:
            return _fail("--participant is required with --no-dialog or --simulate")
        asked = _ask_ids(experiment, participant, session, fields)
        if asked is None:
            return _fail("cancelled in the dialog", 2)
        participant, session, participant_info = asked
    session = 1 if session is None else session
    try:
        validate_id(participant)
        if not 0 <= session < 1000:
            raise ValueError(f"invalid session number {session!r}: use an integer 0-999")
    except ValueError as e:
        return _fail(str(e))

    try:
        stimset = load_stimulus_set(args.stimuli)
    except ContractError as e:
        return _fail(f"cannot read the stimulus set: {e}")
    for w in stimset.warnings:  # e.g. a set too old to carry the manifest check
        print(f"fvmatch-session: WARNING: {w}", file=sys.stderr)
    problems = stimset.verify_files()
    if problems:
        shown = "\n  - ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else "")
        return _fail(f"stimulus set {stimset.root} does not match its manifest; refusing to start:\n  - {shown}")
    if stimset.random_weights:
        print("fvmatch-session: WARNING: this stimulus set was made with an UNTRAINED network (random weights); "
              "its images are not meaningful for a study.", file=sys.stderr)

    data_dir = Path(args.data_dir)
    # One writer per session, from planning to the last row (experiment/session_lock.py); a check writes nothing.
    lock = None
    if not args.check_only:
        try:
            lock = SessionLock(session_dir(data_dir, experiment, participant, session)).acquire()
        except SessionLocked as e:
            return _fail(str(e))
        if lock.taken_over:
            print(f"fvmatch-session: note: took over the lock of a process that ended without releasing it "
                  f"({describe_holder(lock.taken_over)})", file=sys.stderr)
    try:
        return _plan_and_run(args, t0, design, experiment, participant, session, stimset, policy, data_dir,
                             participant_info)
    finally:
        if lock is not None:
            lock.release()


def _plan_and_run(args, t0, design, experiment, participant, session, stimset, policy, data_dir,
                  participant_info) -> int:
    from contracts.common import ContractError
    from experiment.design import write_conditions_csv
    from experiment.simulate import SimulatedParticipant
    from experiment.storage import (NothingSaved, ResumeError, SessionExists, new_session, resume_session, save_info,
                                    set_aside_leftovers)

    def start_new():
        return new_session(data_dir, experiment, participant, session, design, stimset, args.counterbalance,
                           args.seed, policy, allow_duplicate_counterbalance=args.allow_duplicate_counterbalance,
                           participant_info=participant_info)

    try:
        if args.resume:
            try:
                plan = resume_session(data_dir, experiment, participant, session, stimset)
            except NothingSaved as e:
                print(f"fvmatch-session: {e}: starting it from the beginning", file=sys.stderr)
                plan = start_new()
        else:
            try:
                plan = start_new()
            except SessionExists as e:
                if e.status == "completed" or args.no_dialog or policy or not _ask_resume(e):
                    return _fail(str(e))
                plan = resume_session(data_dir, experiment, participant, session, stimset)
    except (SessionExists, ResumeError, ValueError, ContractError) as e:
        return _fail(str(e))

    if plan.resumed and plan.info["simulated"] != policy:
        return _fail(f"{plan.folder} was run with simulated={plan.info['simulated']!r}; resuming it with "
                     f"simulated={policy!r} would mix a person's and a simulation's trials")
    if args.export_conditions:
        out = write_conditions_csv(plan.trials, args.export_conditions, image_root=str(stimset.root.resolve()))
        print(f"conditions file: {out} ({len(plan.trials)} trials)")
    n_main = sum(not t.is_practice and not t.is_catch for t in plan.trials)
    info = plan.info
    print(f"plan for experiment {info['experiment']!r}, participant {info['participant']!r}, session {info['session']}: "
          f"seed {info['seed']}, counterbalance {info['design']['counterbalance']} ({info['design']['counterbalance_rule']}), "
          f"reference rows on the {info['design'].get('reference_side', 'left')}")
    for g, r in (info.get("shared_images") or {}).items():
        if r["excluded"]:
            print(f"  layer group {g}: {r['excluded']} of {r['triplets']} triplets left out because two of their units "
                  f"show the same or a near-duplicate photograph ({len(r['pairs'])} unit pair(s))")
        elif r.get("with_shared"):
            print(f"fvmatch-session: WARNING: layer group {g}: {r['with_shared']} of {r['triplets']} triplets have two "
                  f"units showing the same or a near-duplicate photograph, and design.shared_images = 'allow' lets "
                  f"them into trials", file=sys.stderr)
    pu = info.get("practice_units")
    if pu and pu.get("units"):
        print("  practice units (never in main trials): " + "; ".join(f"{g}: {', '.join(us)}" for g, us in pu["units"].items()))
    elif pu and any(t.is_practice for t in plan.trials):
        print("  practice trials show main units (design.practice_units = 'main'): their feedback reveals main triplets")
    rep = info.get("repetition")
    if rep:
        print(f"  repetition: an image is shown up to {rep['max_shows']} times ({rep['images_shown_more_than_once']} of "
              f"{rep['images_shown']} images more than once); in {rep['memory_matchable']} of {rep['main_exemplar_trials']} "
              f"main exemplar trials a row pair can be matched from memory of an earlier trial (in {rep['rows_seen_before']} both "
              f"rows were shown before; design.exemplar_ranks = {plan.design['design']['exemplar_ranks']!r})")
    print(f"{plan.folder}: {len(plan.trials)} trials ({n_main} main, {sum(t.is_practice for t in plan.trials)} practice, "
          f"{sum(t.is_catch for t in plan.trials)} catch)" + (f", resuming at trial {plan.start_index + 1}" if plan.resumed else ""))
    if args.check_only:
        return 0

    plan.folder.mkdir(parents=True, exist_ok=True)
    for p in set_aside_leftovers(plan):
        print(f"fvmatch-session: no trial had been saved in {plan.folder}; starting it cleanly (kept {p.name})",
              file=sys.stderr)
    save_info(plan)  # from here on the folder always holds a session.json, so it can be resumed
    if not plan.resumed:
        write_conditions_csv(plan.trials, plan.folder / "psychopy" / f"{participant}_{experiment}_conditions.csv",
                             image_root=str(stimset.root.resolve()))
    sim = None
    if policy:
        from experiment.design import derive_seed

        sim = SimulatedParticipant(policy, derive_seed("simulated-participant", plan.info["seed"], plan.start_index),
                                   stimset_root=stimset.root)
        if sim.observer is not None:  # which network answered: a resume must not switch it mid-session
            before = plan.info.get("simulated_observer")
            if before and before["weights"]["state_sha256"] != sim.observer["weights"]["state_sha256"]:
                return _fail(f"{plan.folder} was answered by the observer network {before['weights']['identity']} "
                             f"(state sha256 {before['weights']['state_sha256'][:12]}...); this run would use "
                             f"{sim.observer['weights']['identity']} ({sim.observer['weights']['state_sha256'][:12]}...)")
            plan.info["simulated_observer"] = sim.observer
            save_info(plan)
    from experiment.runner import run_session

    try:
        status = run_session(plan, stimset, sim=sim, screenshot_dir=Path(args.screenshots) if args.screenshots else None,
                             sim_escape_after=args.sim_escape_after, max_trials=args.max_trials,
                             sim_hang_after=args.sim_hang_after, check_timing=not args.no_timing_check)
    except ValueError as e:
        return _fail(str(e))
    except Exception:
        import traceback

        traceback.print_exc()
        return _fail(f"the session stopped on an unexpected error (above). Every finished trial is saved in "
                     f"{plan.folder}; continue with --resume once the problem is fixed.")
    done = plan.info["n_trials_completed"]
    print(f"{status}: {done} of {len(plan.trials)} trials saved in {plan.folder} ({time.perf_counter() - t0:.1f} s)")
    return {"completed": 0, "aborted": 3, "running": 4}[status]  # 4: only with the hidden test option --max-trials


if __name__ == "__main__":
    raise SystemExit(main())
