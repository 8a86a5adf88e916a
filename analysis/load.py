"""Sessions -> one validated, merged trials table plus provenance (only through ``contracts.session``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from contracts.common import ContractError, sha256_json
from contracts.session import SESSION_FILE, TRIALS_FILE, read_session_info, read_trials, session_mode

LAYER_GROUPS = ("early", "middle", "late")
# Keys of the design config that legitimately differ between participants of one experiment.
# Only used for sessions written before schema 1.1, which lack design_sha256.
_PER_SESSION_KEYS = ("seed", "participant", "session", "started", "date", "order", "counterbalance", "file")


class InputError(ValueError):
    """The set of sessions cannot be analysed together (nothing found, mixed sets or designs, duplicates)."""


@dataclass
class LoadedSessions:
    trials: pd.DataFrame  # every trial of every session, with a ``session_folder`` column
    sessions: pd.DataFrame  # one row per session: folder, ids, status, counts, set, simulated, design hash
    infos: list[dict]  # session.json contents, in the order of ``sessions``
    warnings: list[str] = field(default_factory=list)
    # folders not analysed, or read with rows left out: {"folder", "problem", "handling"} (results.json, report)
    problems: list[dict] = field(default_factory=list)

    @property
    def stimulus_sets(self) -> list[dict]:
        keys = ["set_id", "manifest_sha256", "random_weights", "manipulation"]
        return self.sessions[keys].drop_duplicates().to_dict("records")


def find_session_folders(inputs: Iterable[os.PathLike | str]) -> list[Path]:
    """Session folders named by ``inputs``: session folders, their files, or folders holding them."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if p.is_file():
            if p.name not in (SESSION_FILE, TRIALS_FILE):
                raise InputError(f"{p}: expected a session folder, its {SESSION_FILE} or its {TRIALS_FILE}")
            p = p.parent
        if (p / SESSION_FILE).is_file():
            found.append(p)
            continue
        below = sorted(q.parent for q in p.glob(f"*/{SESSION_FILE}")) or sorted(q.parent for q in p.rglob(SESSION_FILE))
        if not below:
            raise InputError(f"{p}: no session folders found (a session folder holds {SESSION_FILE} and {TRIALS_FILE})")
        found.extend(below)
    unique = list(dict.fromkeys(f.resolve() for f in found))
    if not unique:
        raise InputError("no session folders given")
    return unique


def folders_without_session_file(inputs: Iterable[os.PathLike | str], found: list[Path]) -> list[Path]:
    """Folders among the inputs that look like sessions but hold no session.json (e.g. a kill during its
    first write left only session.json.tmp): reported, never silently skipped."""
    found_set = set(found)
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.is_dir() or (p / SESSION_FILE).is_file():
            continue
        candidates = {d for d in p.iterdir() if d.is_dir()} | {d for d in p.rglob("sub-*_ses-*") if d.is_dir()}
        for d in sorted(candidates):
            r = d.resolve()
            if (d / SESSION_FILE).is_file() or any(r in f.parents for f in found_set) or d.name.startswith("."):
                continue
            out.append(r)
    return list(dict.fromkeys(out))


def design_fingerprint(design: dict) -> str:
    """Hash of the design config without per-participant keys (seeds etc.), to detect different designs."""

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if not any(t in k.lower() for t in _PER_SESSION_KEYS)}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return sha256_json(strip(design))[:16]


def _check_trials(path: Path, df: pd.DataFrame, info: dict) -> None:
    """Checks beyond the contract reader: ids agree with session.json, outcomes agree with each other."""

    def fail(i: int, col: str, msg: str):
        raise ContractError(path, f"column '{col}', row {i + 1}: {msg}")

    for col in ("experiment", "participant", "session"):
        bad = (df[col] != info[col]).to_numpy().nonzero()[0]
        if len(bad):
            fail(int(bad[0]), col, f"{df[col].iloc[bad[0]]!r} differs from {SESSION_FILE} ({info[col]!r})")
    corr = df[["correct_0", "correct_1", "correct_2"]].sum(axis=1)
    bad = (df.n_correct != corr).to_numpy().nonzero()[0]
    if len(bad):
        fail(int(bad[0]), "n_correct", f"{df.n_correct.iloc[bad[0]]} but correct_0..2 sum to {corr.iloc[bad[0]]}")
    bad = (df.trial_correct != (df.n_correct == 3)).to_numpy().nonzero()[0]
    if len(bad):
        fail(int(bad[0]), "trial_correct", f"{df.trial_correct.iloc[bad[0]]} disagrees with n_correct={df.n_correct.iloc[bad[0]]}")
    bad = (~df.layer_group.isin(LAYER_GROUPS)).to_numpy().nonzero()[0]
    if len(bad):
        fail(int(bad[0]), "layer_group", f"{df.layer_group.iloc[bad[0]]!r} is not one of {LAYER_GROUPS}")
    bad = (df.n_images < 1).to_numpy().nonzero()[0]
    if len(bad):
        fail(int(bad[0]), "n_images", f"{df.n_images.iloc[bad[0]]} is not a positive number of images")
    _check_against_design(fail, df, info)


def _check_against_design(fail, df: pd.DataFrame, info: dict) -> None:
    """Values must be possible in the session's own design: a typo must not become a new condition."""
    rec = info.get("design") or {}
    d, practice, catch = rec.get("design") or {}, rec.get("practice") or {}, rec.get("catch") or {}
    allowed_n = set(d.get("n_images") or [])
    if practice.get("trials"):
        allowed_n |= set(practice.get("n_images") or [])
    if catch.get("per_block"):
        allowed_n.add(catch.get("n_images"))
    checks = [
        ("n_images", ~df.n_images.isin(allowed_n), f"not one of the design's n_images {sorted(allowed_n)}")
        if allowed_n else None,
        ("trial_type", ~df.trial_type.isin(set(d.get("trial_types") or []) | set(practice.get("trial_types") or [])),
         f"not one of the design's trial types {d.get('trial_types')}") if d.get("trial_types") else None,
        ("trial_index", (df.trial_index < 0) | (df.trial_index >= info["n_trials_planned"]),
         f"outside the session's plan of {info['n_trials_planned']} trials (0..{info['n_trials_planned'] - 1})"),
    ]
    for col in ("rt_first_click", "rt_confirm", "paused_s"):
        v = df[col]
        checks.append((col, v.notna() & ~(np.isfinite(v) & (v >= 0)), "not a finite time >= 0 s"))
    checks.append(("rt_confirm", df.rt_first_click.notna() & df.rt_confirm.notna() & (df.rt_confirm < df.rt_first_click),
                   "earlier than rt_first_click"))
    for check in checks:
        if check is None:
            continue
        col, mask, what = check
        bad = mask.to_numpy().nonzero()[0]
        if len(bad):
            v = df[col].iloc[bad[0]]
            fail(int(bad[0]), col, f"{v.item() if hasattr(v, 'item') else v!r} is {what}")


def _recheck_stimulus_set(row: dict, warns: list[str], cache: dict) -> str:
    """Re-read the stimulus set a session recorded, when it is still where it was: a manifest edited after it
    was written (e.g. random_weights) is refused, and the session's record must agree with the set."""
    from contracts.stimulus_set import load_stimulus_set

    path = row.get("set_path")
    if not path or not Path(path).is_dir():
        return "not found (not re-checked)"
    key = str(Path(path).resolve())
    if key not in cache:
        try:
            cache[key] = load_stimulus_set(key)
        except ContractError as e:
            raise InputError(f"{row['folder']}: its stimulus set cannot be trusted: {e}") from e
        warns.extend(cache[key].warnings)
    stimset = cache[key]
    if stimset.manifest_sha256 != row["manifest_sha256"]:
        warns.append(f"{row['folder']}: the stimulus set at {path} has changed since the session ran (manifest "
                     f"sha256 {stimset.manifest_sha256[:12]}... now, {row['manifest_sha256'][:12]}... recorded)")
        return "changed since the session"
    if stimset.random_weights != row["random_weights"]:
        raise InputError(f"{row['folder']}: session.json records random_weights={row['random_weights']} but its "
                         f"stimulus set {path} says {stimset.random_weights}; refusing")
    return "checked" if not stimset.warnings else "read (no manifest check: set older than schema 1.1)"


def load_sessions(
    inputs: Iterable[os.PathLike | str], allow_mixed_sets: bool = False, allow_mixed_designs: bool = False
) -> LoadedSessions:
    """Read and validate every session, refuse incompatible mixtures unless allowed, and merge."""
    inputs = list(inputs)
    folders = find_session_folders(inputs)
    tables, rows, infos, warns = [], [], [], []
    problems: list[dict] = []

    def problem(folder: Path, what: str, handling: str) -> None:
        problems.append({"folder": str(folder), "problem": what, "handling": handling})
        warns.append(f"{folder}: {what} ({handling})")

    for folder in folders_without_session_file(inputs, folders):
        tmp = " (only session.json.tmp: killed during its first write)" if (folder / (SESSION_FILE + ".tmp")).exists() else ""
        problem(folder, f"no {SESSION_FILE}{tmp}", "not analysed")
    seen: dict[tuple[str, str, int], Path] = {}
    for folder in folders:
        info = read_session_info(folder)
        if not (folder / TRIALS_FILE).is_file() and info["n_trials_completed"] == 0:
            problem(folder, f"no {TRIALS_FILE}: the session ended before its first trial", "not analysed")
            continue
        df = read_trials(folder, torn_last_row="drop")
        if df.attrs.get("torn_last_row"):
            problem(folder, f"{TRIALS_FILE} row {df.attrs['torn_last_row']} is incomplete (killed while writing it)",
                    "that row left out; the session keeps its complete rows")
        _check_trials(folder / TRIALS_FILE, df, info)
        key = (info["experiment"], info["participant"], info["session"])
        if key in seen:
            raise InputError(f"{folder}: session {key} also read from {seen[key]} (duplicate session)")
        seen[key] = folder
        if df.empty:
            warns.append(f"{folder}: trials.csv has no trials")
        if len(df) < info["n_trials_planned"] and info["status"] == "completed":
            problem(folder, f"marked completed but {TRIALS_FILE} holds {len(df)} of {info['n_trials_planned']} "
                            "planned trials", "treated as an incomplete session")
        elif len(df) != info["n_trials_completed"]:
            warns.append(f"{folder}: {SESSION_FILE} says {info['n_trials_completed']} trials completed, "
                         f"{TRIALS_FILE} holds {len(df)}; the rows are analysed")
        df = df.assign(session_folder=str(folder), mode=session_mode(info))
        tables.append(df)
        infos.append(info)
        st = info["stimulus_set"]
        rows.append({
            "folder": str(folder), "experiment": info["experiment"], "participant": info["participant"],
            "session": info["session"], "mode": session_mode(info), "status": info["status"],
            "n_trials_planned": info["n_trials_planned"], "n_trials_completed": info["n_trials_completed"],
            "n_rows": len(df), "set_id": st["set_id"], "manifest_sha256": st["manifest_sha256"],
            "set_path": st.get("path"),
            "random_weights": bool(st.get("random_weights", False)), "simulated": info["simulated"],
            "manipulation": (st.get("manipulation") or {}).get("kind"),  # session 1.3; None: original network
            # design_sha256 (session schema 1.1) is the experiment's own fingerprint of the config.
            "design_hash": info.get("design_sha256") or design_fingerprint(info["design"]),
            "design_fingerprint": design_fingerprint(info["design"]), "has_design_sha256": "design_sha256" in info,
        })
    sets: dict = {}
    for r in rows:
        r["set_rechecked"] = _recheck_stimulus_set(r, warns, sets)
    if not rows:
        raise InputError("no session could be analysed: " + "; ".join(f"{p['folder']}: {p['problem']}" for p in problems))
    sessions = pd.DataFrame(rows)
    sets = sessions[["set_id", "manifest_sha256"]].drop_duplicates()
    if len(sets) > 1:
        msg = "sessions used different stimulus sets: " + ", ".join(f"{a} ({b[:12]})" for a, b in sets.itertuples(index=False))
        if not allow_mixed_sets:
            raise InputError(msg + "; pass --allow-mixed-sets to analyse them together")
        warns.append(msg + " (analysed together because --allow-mixed-sets was given)")
    lacking = sessions[~sessions.has_design_sha256]
    if len(lacking) and len(lacking) < len(sessions):
        # a session written before schema 1.1 has no design_sha256: compare every session by the older
        # fingerprint of the recorded config instead of calling it a different design
        sessions["design_hash"] = sessions.design_fingerprint
        warns.append(f"{len(lacking)} session(s) lack design_sha256 (written before session schema 1.1: "
                     f"{', '.join(lacking.participant.astype(str))}); designs compared by the recorded design config")
    designs = sessions.design_hash.unique()
    if len(designs) > 1:
        groups = {h: list(sessions.participant[sessions.design_hash == h]) for h in designs}
        msg = "sessions used different designs: " + "; ".join(f"{h}: {', '.join(p)}" for h, p in groups.items())
        if len(lacking) and len(lacking) < len(sessions):
            msg += f" (compared by the recorded config because {', '.join(lacking.participant.astype(str))} lack design_sha256)"
        if not allow_mixed_designs:
            raise InputError(msg + "; pass --allow-mixed-designs to analyse them together")
        warns.append(msg + " (analysed together because --allow-mixed-designs was given)")
    if sessions.experiment.nunique() > 1:
        warns.append("sessions come from several experiments: " + ", ".join(sorted(sessions.experiment.unique())))
    trials = pd.concat(tables, ignore_index=True)
    return LoadedSessions(trials=trials, sessions=sessions, infos=infos, warnings=warns, problems=problems)
