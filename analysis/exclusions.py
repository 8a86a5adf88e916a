"""Exclusions: practice trials, inattentive participants (catch trials), incomplete sessions. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

INCOMPLETE_POLICIES = ("include", "exclude")


@dataclass
class ExclusionResult:
    trials: pd.DataFrame  # main (non-practice, non-catch) trials of the participants kept
    catch: pd.DataFrame  # per participant: n_catch, catch_accuracy, excluded
    summary: dict  # JSON-able record for results.json and the report


def apply_exclusions(
    trials: pd.DataFrame, sessions: pd.DataFrame, min_catch_accuracy: float = 0.7, incomplete: str = "include"
) -> ExclusionResult:
    """Drop practice and catch trials, participants below ``min_catch_accuracy`` on catch trials (whole-trial
    correctness: a random responder scores 1/6), and incomplete sessions if ``incomplete == "exclude"``."""
    if incomplete not in INCOMPLETE_POLICIES:
        raise ValueError(f"incomplete must be one of {INCOMPLETE_POLICIES}, not {incomplete!r}")
    if not 0 <= min_catch_accuracy <= 1:
        raise ValueError(f"min_catch_accuracy must be within [0, 1], not {min_catch_accuracy}")
    # n_rows: what trials.csv holds; a session marked completed with rows missing is incomplete too
    n_rows = sessions.n_rows if "n_rows" in sessions else sessions.n_trials_completed
    is_incomplete = ((sessions.status != "completed") | (sessions.n_trials_completed < sessions.n_trials_planned)
                     | (n_rows < sessions.n_trials_planned))
    incomplete_rows = sessions[is_incomplete]
    incomplete_list = [
        {"folder": r.folder, "participant": r.participant, "session": int(r.session), "status": r.status,
         "n_trials_completed": int(min(r.n_trials_completed, getattr(r, "n_rows", r.n_trials_completed))),
         "n_trials_planned": int(r.n_trials_planned),
         "handling": "trials kept" if incomplete == "include" else "session excluded"}
        for r in incomplete_rows.itertuples()
    ]
    kept = trials
    if incomplete == "exclude" and len(incomplete_rows):
        kept = kept[~kept.session_folder.isin(set(incomplete_rows.folder))]

    practice = kept.is_practice
    catch_trials = kept[~practice & kept.is_catch]
    catch = (catch_trials.groupby("participant").trial_correct.agg(n_catch="size", catch_accuracy="mean")
             .reset_index())
    all_participants = sorted(kept.participant.unique())
    catch = pd.DataFrame({"participant": all_participants}).merge(catch, how="left", on="participant")
    catch["n_catch"] = catch.n_catch.fillna(0).astype(int)
    catch["excluded"] = catch.catch_accuracy < min_catch_accuracy  # NaN (no catch trials) compares False
    excluded = [
        {"participant": r.participant,
         "reason": f"catch-trial accuracy {r.catch_accuracy:.2f} < {min_catch_accuracy:.2f} ({r.n_catch} catch trials)"}
        for r in catch[catch.excluded].itertuples()
    ]
    no_catch = list(catch.participant[catch.n_catch == 0])
    main = kept[~practice & ~kept.is_catch & ~kept.participant.isin({e["participant"] for e in excluded})]
    summary = {
        "practice_trials_dropped": int(practice.sum()),
        "catch_trials": int(len(catch_trials)),
        "min_catch_accuracy": min_catch_accuracy,
        "catch_accuracy_level": "trial (all three rows right; a random responder scores 1/6)",
        "excluded_participants": excluded,
        "participants_without_catch_trials": no_catch,
        "incomplete_policy": incomplete,
        "incomplete_sessions": incomplete_list,
        "n_participants_analysed": int(main.participant.nunique()),
        "n_trials_analysed": int(len(main)),
    }
    return ExclusionResult(trials=main.reset_index(drop=True), catch=catch, summary=summary)
