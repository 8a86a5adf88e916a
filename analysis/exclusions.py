"""Exclusions, the same for lab and online sessions: practice trials, incomplete sessions, and the
pre-registered rules of ``analysis/exclusions.toml`` (catch-trial accuracy, time on the instructions, time in
the session, choice variability) judged per session. Pure functions: trials and session.json in, verdicts out.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field

import pandas as pd

from analysis.exclusion_rules import ExclusionRules, load_rules

INCOMPLETE_POLICIES = ("include", "exclude")
RULES = ("catch", "instructions", "total_time", "choice_variability")
UNPACED = "simulated participant (runs unpaced: its times mean nothing)"


@dataclass
class SessionVerdict:
    excluded: bool
    reasons: list[str]  # one sentence per rule the session tripped
    not_evaluated: dict[str, str]  # rule -> why it could not be judged (the session is kept for that rule)
    measures: dict = field(default_factory=dict)


@dataclass
class ExclusionResult:
    trials: pd.DataFrame  # main (non-practice, non-catch) trials of the sessions kept
    catch: pd.DataFrame  # per session: participant, session, n_catch, catch_accuracy, excluded
    summary: dict  # JSON-able record for results.json and the report
    sessions: pd.DataFrame = field(default_factory=pd.DataFrame)  # per session: measures, verdict (exclusions.csv)


# --- measures (pure) -----------------------------------------------------------------------------------------

def catch_accuracy(trials: pd.DataFrame) -> tuple[int, float]:
    """(number of non-practice catch trials, their whole-trial accuracy; NaN without any)."""
    c = trials[~trials.is_practice & trials.is_catch]
    return len(c), float(c.trial_correct.mean()) if len(c) else math.nan


def instructions_seconds(info: dict) -> tuple[float | None, str]:
    """Seconds on the instruction screen, or None and why it is unknown. Session schema 1.5 records
    ``instructions_s`` in both modes; online sessions before 1.5 have ``online.instructions_s``."""
    value = info.get("instructions_s")
    if value is None:
        value = (info.get("online") or {}).get("instructions_s")
    if value is not None:
        return float(value), ""
    if "instructions_s" in info or "instructions_s" in (info.get("online") or {}):
        return None, "the instructions were not finished in this session"
    return None, "not recorded (a lab session written before session schema 1.5)"


def _time(text) -> _dt.datetime | None:
    try:
        t = _dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo is not None else None


def _trial_end(row) -> _dt.datetime | None:
    onset = _time(row.onset)
    if onset is None:
        return None
    rt = row.rt_confirm if isinstance(row.rt_confirm, float) and math.isfinite(row.rt_confirm) else 0.0
    paused = row.paused_s if isinstance(row.paused_s, float) and math.isfinite(row.paused_s) else 0.0
    return onset + _dt.timedelta(seconds=rt + paused)


def session_seconds(trials: pd.DataFrame, info: dict) -> tuple[float | None, str]:
    """Seconds spent in the session: the sum over its runs of end minus start. A run without an end (killed,
    browser closed) ends at its last saved trial; pauses between runs do not count. Sessions without ``runs``
    count from ``started`` to ``ended`` (or to the last saved trial)."""
    runs = [r for r in info.get("runs") or [] if isinstance(r, dict)]
    if not runs:
        runs = [{"started": info.get("started"), "ended": info.get("ended"), "start_index": 0}]
    starts = [r.get("start_index", 0) if isinstance(r.get("start_index"), int) else 0 for r in runs]
    total = 0.0
    for i, run in enumerate(runs):
        begin = _time(run.get("started"))
        if begin is None:
            return None, f"run {i} has no readable start time"
        end = _time(run.get("ended"))
        if end is None:  # the trials this run saved: from its start index to the next run's
            stop = starts[i + 1] if i + 1 < len(runs) else math.inf
            mine = trials[(trials.trial_index >= starts[i]) & (trials.trial_index < stop)]
            ends = [e for e in (_trial_end(r) for r in mine.itertuples()) if e is not None]
            end = max(ends) if ends else begin
        total += max((end - begin).total_seconds(), 0.0)
    return total, ""


def same_choice_fraction(trials: pd.DataFrame) -> tuple[int, float, str]:
    """(answered non-practice trials, fraction of them with the most frequent pairing, that pairing)."""
    t = trials[~trials.is_practice]
    if t.empty:
        return 0, math.nan, ""
    counts = t.assignment.astype(str).value_counts()
    return len(t), float(counts.iloc[0] / len(t)), str(counts.index[0])


# --- the verdict for one session (pure) ----------------------------------------------------------------------

def evaluate_session(trials: pd.DataFrame, info: dict, rules: ExclusionRules) -> SessionVerdict:
    """Judge one session (its trials.csv rows and session.json) by ``rules``; lab and online alike."""
    reasons: list[str] = []
    skipped: dict[str, str] = {}
    simulated = info.get("simulated") is not None
    complete = info.get("status") == "completed" and len(trials) >= info.get("n_trials_planned", 0)

    n_catch, acc = catch_accuracy(trials)
    if rules.catch_min_accuracy > 0:
        if n_catch == 0:
            skipped["catch"] = "no catch trials"
        elif acc < rules.catch_min_accuracy:
            reasons.append(f"catch-trial accuracy {acc:.2f} < {rules.catch_min_accuracy:.2f} ({n_catch} catch trials)")

    instr, why = instructions_seconds(info)
    if rules.instructions_min_seconds > 0:
        if simulated:
            skipped["instructions"] = UNPACED
        elif instr is None:
            skipped["instructions"] = why
        elif instr < rules.instructions_min_seconds:
            reasons.append(f"{instr:.1f} s on the instructions < {rules.instructions_min_seconds:g} s")

    secs, why = session_seconds(trials, info)
    minutes = None if secs is None else secs / 60
    if rules.total_min_minutes > 0 or rules.total_max_minutes > 0:
        if simulated:
            skipped["total_time"] = UNPACED
        elif minutes is None:
            skipped["total_time"] = why
        else:
            if rules.total_max_minutes > 0 and minutes > rules.total_max_minutes:
                reasons.append(f"{minutes:.1f} min in the session > {rules.total_max_minutes:g} min")
            if rules.total_min_minutes > 0 and minutes < rules.total_min_minutes:
                if complete:
                    reasons.append(f"{minutes:.1f} min for the whole session < {rules.total_min_minutes:g} min")
                else:
                    skipped["total_time"] = "minimum not applied: the session is incomplete"

    n_choice, same, modal = same_choice_fraction(trials)
    if rules.variability_max_same_fraction < 1:
        if n_choice < rules.variability_min_trials:
            skipped["choice_variability"] = f"{n_choice} non-practice trials < {rules.variability_min_trials}"
        elif same > rules.variability_max_same_fraction:
            reasons.append(f"the same pairing ({modal}) on {same:.0%} of {n_choice} trials > "
                           f"{rules.variability_max_same_fraction:.0%}")

    measures = {"n_catch": n_catch, "catch_accuracy": acc, "instructions_s": instr,
                "session_minutes": None if minutes is None else round(minutes, 3),
                "n_choice_trials": n_choice, "same_choice_fraction": same, "most_frequent_pairing": modal}
    return SessionVerdict(bool(reasons), reasons, skipped, measures)


# --- all sessions ----------------------------------------------------------------------------------------------

def _incomplete(sessions: pd.DataFrame, incomplete: str) -> pd.DataFrame:
    # n_rows: what trials.csv holds; a session marked completed with rows missing is incomplete too
    n_rows = sessions.n_rows if "n_rows" in sessions else sessions.n_trials_completed
    mask = ((sessions.status != "completed") | (sessions.n_trials_completed < sessions.n_trials_planned)
            | (n_rows < sessions.n_trials_planned))
    return sessions[mask]


def apply_exclusions(trials: pd.DataFrame, sessions: pd.DataFrame, min_catch_accuracy: float | None = None,
                     incomplete: str = "include", rules: ExclusionRules | None = None,
                     infos: dict[str, dict] | None = None) -> ExclusionResult:
    """Drop practice and catch trials, incomplete sessions if ``incomplete == "exclude"``, and every session
    that trips one of ``rules`` (default: the shipped ``analysis/exclusions.toml``; ``min_catch_accuracy``
    replaces its catch threshold). ``infos``: session folder -> session.json (without it the time rules are
    not evaluated)."""
    if incomplete not in INCOMPLETE_POLICIES:
        raise ValueError(f"incomplete must be one of {INCOMPLETE_POLICIES}, not {incomplete!r}")
    rules = rules or load_rules()
    if min_catch_accuracy is not None and min_catch_accuracy != rules.catch_min_accuracy:
        rules = rules.with_catch_accuracy(min_catch_accuracy, f"catch.min_accuracy = {min_catch_accuracy:g} (--min-catch-accuracy)")
    infos = infos or {}
    incomplete_rows = _incomplete(sessions, incomplete)
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

    rows, excluded, not_checked = [], [], []
    by_session = dict(tuple(kept.groupby("session_folder", sort=False)))
    for s in sessions.itertuples():
        if s.folder not in by_session:
            continue
        info = infos.get(s.folder) or {"status": s.status, "n_trials_planned": s.n_trials_planned,
                                       "simulated": s.simulated, "runs": None, "started": None}
        v = evaluate_session(by_session[s.folder], info, rules)
        if s.folder not in infos:
            v.not_evaluated.setdefault("instructions", "session.json not given to the rules")
            v.not_evaluated["total_time"] = "session.json not given to the rules"
        rows.append({"participant": s.participant, "session": int(s.session), "mode": s.mode if "mode" in sessions else "lab",
                     "simulated": s.simulated, "excluded": v.excluded, "reasons": "; ".join(v.reasons),
                     **v.measures, "not_evaluated": "; ".join(f"{k}: {w}" for k, w in v.not_evaluated.items()),
                     "folder": s.folder})
        if v.excluded:
            excluded.append({"participant": s.participant, "session": int(s.session), "folder": s.folder,
                             "reason": "; ".join(v.reasons), "reasons": v.reasons})
        for rule, why in v.not_evaluated.items():
            not_checked.append({"participant": s.participant, "session": int(s.session), "rule": rule, "why": why})
    table = pd.DataFrame(rows, columns=["participant", "session", "mode", "simulated", "excluded", "reasons", "n_catch",
                                        "catch_accuracy", "instructions_s", "session_minutes", "n_choice_trials",
                                        "same_choice_fraction", "most_frequent_pairing", "not_evaluated", "folder"])
    dropped = {e["folder"] for e in excluded}
    practice = kept.is_practice
    main = kept[~practice & ~kept.is_catch & ~kept.session_folder.isin(dropped)]
    catch = table[["participant", "session", "n_catch", "catch_accuracy"]].assign(
        excluded=table.reasons.str.contains("catch-trial accuracy", regex=False))
    summary = {
        "practice_trials_dropped": int(practice.sum()),
        "catch_trials": int((~practice & kept.is_catch).sum()),
        "min_catch_accuracy": rules.catch_min_accuracy,
        "catch_accuracy_level": "trial (all three rows right; a random responder scores 1/6)",
        "rules": rules.as_dict(),  # the pre-registered file, its sha256, and any command-line override
        "excluded_participants": excluded,  # one entry per excluded session, every rule it tripped
        "not_evaluated": not_checked,
        "participants_without_catch_trials": sorted(table.participant[table.n_catch == 0].unique()),
        "incomplete_policy": incomplete,
        "incomplete_sessions": incomplete_list,
        "n_participants_analysed": int(main.participant.nunique()),
        "n_trials_analysed": int(len(main)),
    }
    return ExclusionResult(trials=main.reset_index(drop=True), catch=catch, summary=summary, sessions=table)
