"""``fvmatch-session``: Run a participant session of the matching task (PsychoPy)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EPILOG = """examples:
  # a participant in the lab (a dialog asks for participant id and session number)
  fvmatch-session --stimuli data/stimuli/study1 --design default --experiment study1

  # the same without the dialog; units are spread over participants by the trailing number (P07 -> 7)
  fvmatch-session --stimuli data/stimuli/study1 --experiment study1 --participant P07 --session 1 --no-dialog

  # continue an interrupted session after the last saved trial, in the same order
  fvmatch-session --stimuli data/stimuli/study1 --experiment study1 --participant P07 --session 1 --resume

  # a simulated participant (correct on 80% of trials) in the real window, at full speed
  fvmatch-session --stimuli data/stimuli/demo --design demo --experiment demo --participant sim01 \\
      --session 1 --simulate noisy:0.8 --data-dir data/sessions --no-dialog

  # check a stimulus set against a design, and write the trial list as a PsychoPy conditions file
  fvmatch-session --stimuli data/stimuli/study1 --participant P07 --check-only --export-conditions P07.csv

data: data/sessions/<experiment>/sub-<participant>_ses-<NN>/{session.json,trials.csv,psychopy/}
exit status: 0 completed (or checks passed), 2 bad input or refused, 3 aborted with Escape,
             4 stopped by --max-trials (session left 'running', continue with --resume)
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
                   help="counterbalance index: which triplets of units this participant gets "
                        "(default: the trailing number of the participant id)")
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


def _ask_ids(experiment: str, participant: str | None, session: int | None) -> tuple[str, int] | None:
    from psychopy import gui

    info = {"participant": participant or "", "session": session if session is not None else 1}
    dlg = gui.DlgFromDict(info, title=f"fvmatch: {experiment}", order=["participant", "session"])
    if not dlg.OK:
        return None
    return str(info["participant"]).strip(), int(info["session"])


def _ask_resume(err) -> bool:
    from psychopy import gui

    dlg = gui.Dlg(title="Session exists")
    dlg.addText(f"{err.folder.name} already has data ({err.status}, {err.n_done} trials saved).")
    dlg.addText("It is never overwritten. OK = continue it after the last saved trial; Cancel = quit.")
    dlg.show()
    return bool(dlg.OK)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    from contracts.common import ContractError
    from contracts.session import validate_id
    from contracts.stimulus_set import load_stimulus_set
    from experiment.config import ConfigError, load_design
    from experiment.design import write_conditions_csv
    from experiment.simulate import SimulatedParticipant, parse_policy
    from experiment.storage import ResumeError, SessionExists, new_session, resume_session, save_info

    try:
        policy = parse_policy(args.simulate) if args.simulate else None
        design = load_design(args.design)
        experiment = validate_id(args.experiment or design.name, "experiment name")
        if args.counterbalance is not None and args.counterbalance < 0:
            raise ValueError(f"--counterbalance must be >= 0, got {args.counterbalance}")
    except (ConfigError, ValueError) as e:
        return _fail(str(e))

    participant, session = args.participant, args.session
    if participant is None:
        if args.no_dialog or policy:
            return _fail("--participant is required with --no-dialog or --simulate")
        asked = _ask_ids(experiment, participant, session)
        if asked is None:
            return _fail("cancelled in the dialog", 2)
        participant, session = asked
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
    problems = stimset.verify_files()
    if problems:
        shown = "\n  - ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else "")
        return _fail(f"stimulus set {stimset.root} does not match its manifest; refusing to start:\n  - {shown}")
    if stimset.random_weights:
        print("fvmatch-session: WARNING: this stimulus set was made with an UNTRAINED network (random weights); "
              "its images are not meaningful for a study.", file=sys.stderr)

    data_dir = Path(args.data_dir)
    try:
        if args.resume:
            plan = resume_session(data_dir, experiment, participant, session, stimset)
        else:
            try:
                plan = new_session(data_dir, experiment, participant, session, design, stimset, args.counterbalance,
                                   args.seed, policy)
            except SessionExists as e:
                if args.no_dialog or policy or not _ask_resume(e):
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
    print(f"{plan.folder}: {len(plan.trials)} trials ({n_main} main, {sum(t.is_practice for t in plan.trials)} practice, "
          f"{sum(t.is_catch for t in plan.trials)} catch), counterbalance {plan.info['design']['counterbalance']}, "
          f"seed {plan.info['seed']}" + (f", resuming at trial {plan.start_index + 1}" if plan.resumed else ""))
    if args.check_only:
        return 0

    plan.folder.mkdir(parents=True, exist_ok=True)
    save_info(plan)  # from here on the folder always holds a session.json, so it can be resumed
    if not plan.resumed:
        write_conditions_csv(plan.trials, plan.folder / "psychopy" / f"{participant}_{experiment}_conditions.csv",
                             image_root=str(stimset.root.resolve()))
    sim = None
    if policy:
        from experiment.design import derive_seed

        sim = SimulatedParticipant(policy, derive_seed("simulated-participant", plan.info["seed"], plan.start_index),
                                   stimset_root=stimset.root)
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
    return {"completed": 0, "aborted": 3, "running": 4}[status]


if __name__ == "__main__":
    raise SystemExit(main())
