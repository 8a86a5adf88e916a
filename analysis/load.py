"""Sessions -> one validated, merged trials table plus provenance (only through ``contracts.session``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from contracts.common import ContractError, sha256_json
from contracts.session import SESSION_FILE, TRIALS_FILE, read_session_info, read_trials

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


def load_sessions(
    inputs: Iterable[os.PathLike | str], allow_mixed_sets: bool = False, allow_mixed_designs: bool = False
) -> LoadedSessions:
    """Read and validate every session, refuse incompatible mixtures unless allowed, and merge."""
    folders = find_session_folders(inputs)
    tables, rows, infos, warns = [], [], [], []
    seen: dict[tuple[str, str, int], Path] = {}
    for folder in folders:
        info = read_session_info(folder)
        df = read_trials(folder)
        _check_trials(folder / TRIALS_FILE, df, info)
        key = (info["experiment"], info["participant"], info["session"])
        if key in seen:
            raise InputError(f"{folder}: session {key} also read from {seen[key]} (duplicate session)")
        seen[key] = folder
        if df.empty:
            warns.append(f"{folder}: trials.csv has no trials")
        df = df.assign(session_folder=str(folder))
        tables.append(df)
        infos.append(info)
        st = info["stimulus_set"]
        rows.append({
            "folder": str(folder), "experiment": info["experiment"], "participant": info["participant"],
            "session": info["session"], "status": info["status"],
            "n_trials_planned": info["n_trials_planned"], "n_trials_completed": info["n_trials_completed"],
            "n_rows": len(df), "set_id": st["set_id"], "manifest_sha256": st["manifest_sha256"],
            "random_weights": bool(st.get("random_weights", False)), "simulated": info["simulated"],
            "manipulation": (st.get("manipulation") or {}).get("kind"),  # session 1.3; None: original network
            # design_sha256 (session schema 1.1) is the experiment's own fingerprint of the config.
            "design_hash": info.get("design_sha256") or design_fingerprint(info["design"]),
        })
    sessions = pd.DataFrame(rows)
    sets = sessions[["set_id", "manifest_sha256"]].drop_duplicates()
    if len(sets) > 1:
        msg = "sessions used different stimulus sets: " + ", ".join(f"{a} ({b[:12]})" for a, b in sets.itertuples(index=False))
        if not allow_mixed_sets:
            raise InputError(msg + "; pass --allow-mixed-sets to analyse them together")
        warns.append(msg + " (analysed together because --allow-mixed-sets was given)")
    designs = sessions.design_hash.unique()
    if len(designs) > 1:
        groups = {h: list(sessions.participant[sessions.design_hash == h]) for h in designs}
        msg = "sessions used different designs: " + "; ".join(f"{h}: {', '.join(p)}" for h, p in groups.items())
        if not allow_mixed_designs:
            raise InputError(msg + "; pass --allow-mixed-designs to analyse them together")
        warns.append(msg + " (analysed together because --allow-mixed-designs was given)")
    if sessions.experiment.nunique() > 1:
        warns.append("sessions come from several experiments: " + ", ".join(sorted(sessions.experiment.unique())))
    trials = pd.concat(tables, ignore_index=True)
    return LoadedSessions(trials=trials, sessions=sessions, infos=infos, warnings=warns)
