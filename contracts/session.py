"""Contract 2: session data, ``data/sessions/<experiment>/sub-<participant>_ses-<session>/``.

Layout::

    session.json    metadata: ids, status, start/end, stimulus set id and manifest hash, design
                    and seed, monitor, software versions, frame statistics
    trials.csv      one row per finished trial, appended and fsync'd before the next trial starts
    psychopy/       PsychoPy's own ExperimentHandler files (<participant>_<experiment>_<date>.*)

Row ``i`` of the reference side (top to bottom) shows unit ``unit_i``. Candidate row ``j`` shows
unit ``unit_<candidate_units[j]>``. ``assignment[i]`` is the candidate row the participant paired
with reference row ``i``; ``correct_i`` says whether that candidate row shows ``unit_i``.
Lists inside a cell are ``;``-separated integers; richer cells (``stimuli``, ``clicks``) are JSON.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import re
from pathlib import Path

import pandas as pd

from contracts.common import ContractError, JsonDocument, read_table, require_fields, sha256_json

SCHEMA = "fvmatch.session"
SCHEMA_VERSION = "1.5"  # 1.1 adds design_sha256; 1.2 adds the trials column paused_s; 1.3: mode and online
# (online sessions), stimulus_set.manipulation, and OPTIONAL_FIELDS_1_3; 1.4: practice_units;
# 1.5: instructions_s and simulated_observer
# Fields session.json gained in 1.3 (all optional: files written before lack them and still read).
# design_sha256 leaves out [monitor] since 1.3 (display_sha256 holds the screen's fingerprint).
OPTIONAL_FIELDS_1_3 = ("mode", "online", "display_sha256", "participant_info", "shared_images", "repetition", "breaks")
OPTIONAL_FIELDS_1_4 = ("practice_units",)  # experiment.storage.practice_units_record
# instructions_s: seconds on the instruction screen, lab and online (null until it is left; the exclusion
# rules use it); simulated_observer: experiment.image_observer.observer_record
OPTIONAL_FIELDS_1_5 = ("instructions_s", "simulated_observer")
SESSION_FILE = "session.json"
TRIALS_FILE = "trials.csv"
PSYCHOPY_DIR = "psychopy"
TRIAL_TYPES = ("exemplar", "feature_vis")
STATUSES = ("running", "completed", "aborted")
MODES = ("lab", "online")  # session.json 'mode' (1.3); sessions written before 1.3 are lab sessions
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # \Z, not $: "$" also matches before a final newline

# Column name -> kind, in file order. Writers write exactly these (plus declared extras).
TRIAL_COLUMNS: dict[str, str] = {
    "experiment": "str",
    "participant": "str",
    "session": "int",
    "trial_index": "int",  # 0-based position in the session's trial list (practice included)
    "block": "int",
    "is_practice": "bool",
    "is_catch": "bool",
    "trial_type": "str",  # exemplar | feature_vis
    "layer_group": "str",  # early | middle | late (catch trials too)
    "n_images": "int",  # images per unit on each side: 1, 3 or 5
    "unit_0": "str", "unit_1": "str", "unit_2": "str",
    "layer_0": "str", "layer_1": "str", "layer_2": "str",
    "channel_0": "int", "channel_1": "int", "channel_2": "int",
    "candidate_units": "str",  # e.g. "2;0;1": candidate row j shows unit_<k>
    "assignment": "str",  # e.g. "1;2;0": reference row i paired with candidate row assignment[i]
    "correct_0": "bool", "correct_1": "bool", "correct_2": "bool",
    "n_correct": "int",  # 0, 1 or 3 (two right forces the third)
    "trial_correct": "bool",
    "rt_first_click": "float",  # seconds from stimulus onset
    "rt_confirm": "float",  # seconds from stimulus onset to the confirming click
    "paused_s": "float",  # seconds the Escape confirmation screen was up after onset (excluded from all times)
    "clicks": "str",  # JSON [[t, "candidate"|"reference"|"confirm", row], ...]
    "stimuli": "str",  # JSON [{"side", "row", "unit", "file", "x", "y", "size"}, ...] (deg)
    "frames": "int",
    "frames_dropped": "int",
    "frame_interval_mean_ms": "float",
    "frame_interval_sd_ms": "float",
    "onset": "str",  # ISO time of stimulus onset
}

COLUMNS_ADDED_IN_1_2 = ("paused_s",)

SESSION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "experiment": str,
    "participant": str,
    "session": int,
    "status": str,
    "started": str,
    "ended": (str, type(None)),
    "stimulus_set": dict,  # {"set_id", "path", "manifest_sha256", "random_weights", "manipulation" (1.3, optional)}
    "design": dict,  # the design config as used, plus per-participant keys (counterbalance, file path)
    "seed": int,
    "monitor": dict,  # {"name", "distance_cm", "width_cm", "resolution"}
    "software": dict,
    "n_trials_planned": int,
    "n_trials_completed": int,
    "frame_stats": dict,
    "simulated": (str, type(None)),  # None for a person, else the simulated policy
}


def design_sha256(config: dict) -> str:
    """Fingerprint of the experimental design as parsed (not its path, not its ``[monitor]`` table):
    equal for every participant of one design, in any booth, so the analysis can refuse sessions run
    with different designs. (Before 1.3 the monitor table was included.)"""
    return sha256_json({k: v for k, v in config.items() if k != "monitor"})


def display_sha256(config: dict) -> str:
    """Fingerprint of the screen a design was run on (its ``[monitor]`` table), recorded beside the design's."""
    return sha256_json(config.get("monitor", {}))


def validate_id(value: str, what: str = "participant id") -> str:
    """Ids become folder names: letters, digits, '-' and '_' only, so they never escape the data folder."""
    if not isinstance(value, str) or not _ID.fullmatch(value):  # fullmatch: '$' alone would accept "P01\n"
        raise ValueError(f"invalid {what} {value!r}: use 1-64 letters, digits, '-' or '_'")
    return value


def session_dir(sessions_root: os.PathLike | str, experiment: str, participant: str, session: int) -> Path:
    """The folder of one participant's session; all three parts are validated."""
    validate_id(experiment, "experiment name")
    validate_id(participant)
    if not isinstance(session, int) or isinstance(session, bool) or not 0 <= session < 1000:
        raise ValueError(f"invalid session number {session!r}: use an integer 0-999")
    return Path(sessions_root) / experiment / f"sub-{participant}_ses-{session:02d}"


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")


def write_session_info(folder: os.PathLike | str, info: dict) -> Path:
    """Write (or rewrite) session.json atomically. ``schema`` fields are added here."""
    return _SESSION_DOC.write(Path(folder) / SESSION_FILE, info)


def session_mode(info: dict) -> str:
    """'lab' or 'online'; sessions written before schema 1.3 have no 'mode' and are lab sessions."""
    return info.get("mode", "lab")


def read_session_info(folder: os.PathLike | str) -> dict:
    return _SESSION_DOC.read(Path(folder) / SESSION_FILE)


def _validate_session_info(path: Path, info: dict) -> None:
    require_fields(path, info, SESSION_FIELDS)
    if info["status"] not in STATUSES:
        raise ContractError(path, f"field 'status' is {info['status']!r}, expected one of {STATUSES}")
    require_fields(path, info["stimulus_set"], {"set_id": str, "manifest_sha256": str}, "stimulus_set.")
    if info.get("mode", "lab") not in MODES:
        raise ContractError(path, f"field 'mode' is {info['mode']!r}, expected one of {MODES}")
    if "online" in info and not isinstance(info["online"], dict):
        raise ContractError(path, "field 'online' must be an object")
    for key in ("design_sha256", "display_sha256"):
        if key in info and not (isinstance(info[key], str) and len(info[key]) == 64):
            raise ContractError(path, f"field '{key}' must be a 64-character hex sha256")
    v = info.get("instructions_s")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0):
        raise ContractError(path, f"field 'instructions_s' must be seconds >= 0 or null, got {v!r}")
    for key, typ in (("participant_info", dict), ("shared_images", dict), ("breaks", list), ("practice_units", dict)):
        if key in info and not isinstance(info[key], typ):
            raise ContractError(path, f"field '{key}' must be a{'n object' if typ is dict else ' list'}")


_SESSION_DOC = JsonDocument(SCHEMA, SCHEMA_VERSION, _validate_session_info)


class TrialLog:
    """Append-only trials.csv: each row is flushed and fsync'd before ``append`` returns.

    Reopening an existing file checks its header, so a resumed session appends to the same table.
    """

    def __init__(self, path: os.PathLike | str, extra_columns: tuple[str, ...] = ()):
        self.path = Path(path)
        self.columns = list(TRIAL_COLUMNS) + [c for c in extra_columns if c not in TRIAL_COLUMNS]
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists:
            header = _header(self.path)
            if header != self.columns:
                missing = [c for c in self.columns if c not in header]
                raise ContractError(self.path, "existing trials table has different columns; refusing to append" + (
                    f" (it lacks {', '.join(missing)}: it was written by an older fvmatch; finish that session with "
                    "the version that started it, or start a new session)" if missing else ""))
            self._repair_partial_last_line()
        self._f = open(self.path, "a", newline="", encoding="utf-8")
        self._w = csv.DictWriter(self._f, fieldnames=self.columns, extrasaction="raise")
        if not exists:
            self._w.writeheader()
            self._sync()

    def _repair_partial_last_line(self) -> None:
        # A kill during a write can leave half a row without its newline: drop it (that trial is redone).
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, row: dict) -> None:
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise ValueError(f"trial row lacks column(s) {', '.join(missing)}")
        self._w.writerow({c: _cell(row[c]) for c in self.columns})
        self._sync()

    def _sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "TrialLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cell(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (list, tuple)) and all(isinstance(x, int) for x in v):
        return format_int_list(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    if v is None:
        return ""
    return v


def format_int_list(values) -> str:
    return ";".join(str(int(v)) for v in values)


def parse_int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(";")] if text else []


def _header(path: Path) -> list[str]:
    """The first row of a CSV file ([] when it cannot be read: read_table then reports why)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


TORN_ROW_POLICIES = ("error", "drop")


def _complete_rows_text(path: Path, torn_last_row: str) -> tuple[str, int | None]:
    """The table's text with only complete rows: every row ends with its newline and has one cell per
    header column. A last row without its newline is what a kill during ``TrialLog.append`` leaves:
    ``torn_last_row="drop"`` leaves it out (returning its 1-based row number), ``"error"`` refuses."""
    if not path.is_file():
        raise ContractError(path, "file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ContractError(path, f"not UTF-8 text ({e})") from e
    torn = None
    if text and not text.endswith("\n"):
        cut = text.rfind("\n") + 1
        if cut == 0:
            raise ContractError(path, "the header row is incomplete (no newline): the file was cut while being written")
        torn = text[:cut].count("\n")  # complete lines include the header: the torn row's 1-based data row number
        if torn_last_row != "drop":
            raise ContractError(path, f"row {torn}: incomplete last row (no final newline: the session was killed "
                                      "while writing it); resuming the session drops it, the analysis reports it")
        text = text[:cut]
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise ContractError(path, f"not a readable CSV table: {e}") from e
    if rows:
        for i, row in enumerate(rows[1:]):
            if len(row) != len(rows[0]):
                raise ContractError(path, f"row {i + 1}: {len(row)} cells but the header has {len(rows[0])} "
                                          "(an incomplete or damaged row)")
    return text, torn


def read_trials(folder_or_file: os.PathLike | str, allow_empty: bool = True, torn_last_row: str = "error") -> pd.DataFrame:
    """Read and validate a trials table. Errors name the file, row and column.

    Rows must be complete (every cell present and parsed, the line ended by its newline). A torn last
    row (a kill during the write) raises, or with ``torn_last_row="drop"`` is left out and its row
    number put in ``df.attrs["torn_last_row"]`` for the caller to report.
    """
    if torn_last_row not in TORN_ROW_POLICIES:
        raise ValueError(f"torn_last_row must be one of {TORN_ROW_POLICIES}, got {torn_last_row!r}")
    p = Path(folder_or_file)
    path = p / TRIALS_FILE if p.is_dir() else p
    text, torn = _complete_rows_text(path, torn_last_row)
    # Tables written before 1.2 lack paused_s: read as unknown (NaN), not zero, since a pause may be in their times.
    older = [c for c in COLUMNS_ADDED_IN_1_2 if c not in _header(path)]
    df = read_table(path, {k: v for k, v in TRIAL_COLUMNS.items() if k not in older}, allow_empty=allow_empty, text=text)
    df.attrs["torn_last_row"] = torn
    for i, onset in enumerate(df["onset"]):
        try:
            ok = _dt.datetime.fromisoformat(onset).tzinfo is not None
        except ValueError:
            ok = False
        if not ok:
            raise ContractError(path, f"column 'onset', row {i + 1}: {onset!r} is not an ISO time with its UTC offset")
    for col in older:
        df.insert(list(TRIAL_COLUMNS).index(col), col, float("nan"))
    for col, allowed in (("trial_type", TRIAL_TYPES),):
        bad = ~df[col].isin(allowed)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise ContractError(path, f"column '{col}', row {i + 1}: {df[col].iloc[i]!r} is not one of {allowed}")
    for col in ("candidate_units", "assignment"):
        for i, text in enumerate(df[col]):
            try:
                perm = parse_int_list(text)
            except ValueError:
                perm = []
            if sorted(perm) != [0, 1, 2]:
                raise ContractError(path, f"column '{col}', row {i + 1}: {text!r} is not a permutation like '2;0;1'")
    dup = df.trial_index.duplicated()
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise ContractError(path, f"column 'trial_index', row {i + 1}: trial {df.trial_index.iloc[i]} appears twice")
    for i, (cu, asg) in enumerate(zip(df.candidate_units, df.assignment)):
        cand, a = parse_int_list(cu), parse_int_list(asg)
        expect = [cand[a[r]] == r for r in range(3)]
        got = [bool(df[f"correct_{r}"].iloc[i]) for r in range(3)]
        if expect != got:
            raise ContractError(path, f"row {i + 1}: correct_0..2 {got} disagree with candidate_units/assignment {expect}")
    return df

