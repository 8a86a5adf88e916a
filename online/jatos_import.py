"""``fvmatch-online jatos-import``: a JATOS results export -> fvmatch session folders (the session contract).

The page of a ``jatos-export`` package appends one JSON line per event to the JATOS result
(``{"fvmatch": "start"|"event"|"trial"|"finish", "pid", "slot", "t", ...}``). JATOS exports results as a text
file (result data concatenated) or a zip of ``data.txt`` files; both are read here. Each participant's lines are
replayed, in order, through the built-in server's own request handlers (``online.sessions.OnlineStudy``): the
same validation (the pairing replayed from the clicks, the trial order), the same storage code and lock as the
lab, and the plan the page ran is recomputed from the study and checked against the line's ``plan_id``.

Nothing is silently dropped: a line that is not JSON (a truncated export), not fvmatch's, or refused by the
validation is reported with its file and line number; an exact repeat of a recorded trial (the page retries an
append whose answer was lost) is counted; a repeat that differs is reported and the first kept. A participant
whose browser died mid-session (no ``finish`` line) gives a session that is kept, with status ``aborted`` and
``online.jatos.partial = true``. A participant whose session folder exists already is left untouched.
"""

from __future__ import annotations

import datetime as _dt
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from contracts.session import read_session_info, read_trials, write_session_info
from experiment.session_lock import SessionLock
from online.jatos_export import slot_plan, slot_rule
from online.sessions import OnlineStudy, RequestError, participant_from_params

KINDS = ("start", "event", "trial", "finish")


class JatosImportError(RuntimeError):
    pass


@dataclass
class Line:
    where: str  # "<file>:<line number>"
    data: dict


@dataclass
class ImportedSession:
    participant: str
    folder: str
    status: str  # completed | aborted (partial) | skipped
    trials: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)


def result_texts(path: Path) -> list[tuple[str, str]]:
    """(name, text) of every result data file: a zip (JATOS results archive) or a text file."""
    if not path.is_file():
        raise JatosImportError(f"{path}: no such results file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = sorted(n for n in z.namelist() if not n.endswith("/") and n.endswith(".txt"))
            if not names:
                raise JatosImportError(f"{path}: a zip without result data (.txt) files")
            return [(f"{path.name}:{n}", z.read(n).decode("utf-8", errors="replace")) for n in names]
    return [(path.name, path.read_bytes().decode("utf-8", errors="replace"))]


def parse_lines(texts: list[tuple[str, str]]) -> tuple[dict[str, list[Line]], list[str]]:
    """Lines grouped by participant id, in file order; and the problems of lines that could not be used."""
    by_pid: dict[str, list[Line]] = {}
    problems: list[str] = []
    for name, text in texts:
        for n, raw in enumerate(text.splitlines(), 1):
            raw = raw.strip()
            if not raw:
                continue
            where = f"{name}:{n}"
            try:
                d = json.loads(raw)
            except json.JSONDecodeError:
                problems.append(f"{where}: not a JSON line (truncated or damaged): {raw[:60]!r}")
                continue
            if not isinstance(d, dict) or d.get("fvmatch") not in KINDS:
                problems.append(f"{where}: not an fvmatch line (no 'fvmatch' kind of {KINDS})")
                continue
            pid = d.get("pid")
            if not isinstance(pid, str) or not pid:
                problems.append(f"{where}: no participant id ('pid')")
                continue
            by_pid.setdefault(pid, []).append(Line(where, d))
    return by_pid, problems


def _iso(value, where: str) -> str:
    try:
        ok = isinstance(value, str) and _dt.datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        ok = False
    if not ok:
        raise RequestError(400, f"{where}: 't' {value!r} is not an ISO time with its offset")
    return value


class Importer:
    def __init__(self, study_dir: Path, data_dir: Path, source: Path):
        self.study = OnlineStudy(study_dir, data_dir)
        self.source = source
        self._plans: dict[int, dict] = {}

    def _slot(self, line: Line) -> dict:
        d = line.data
        slot = d.get("slot")
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < 100000:
            raise RequestError(400, f"{line.where}: 'slot' must be a slot number, got {slot!r}")
        if slot not in self._plans:
            self._plans[slot] = slot_plan(self.study, slot)
        plan = self._plans[slot]
        if d.get("plan_id") != plan["plan_id"]:
            raise RequestError(409, f"{line.where}: the page ran plan {str(d.get('plan_id'))[:12]}... for slot {slot}, "
                                    f"but this study gives {plan['plan_id'][:12]}...: the results are not from a "
                                    "jatos-export of this study folder")
        return {"counterbalance": plan["counterbalance"], "seed": plan["seed"], "rule": slot_rule(slot)}

    def import_participant(self, pid: str, lines: list[Line]) -> ImportedSession:
        try:
            folder = self.study._folder(participant_from_params({"participant": pid})[0])
        except RequestError as e:
            return ImportedSession(pid, "", "skipped", problems=[f"{lines[0].where}: {e.message}; nothing imported"])
        out = ImportedSession(pid, str(folder), "skipped")
        if folder.exists():
            out.problems.append(f"{folder} exists already (imported before, or a lab/served session): left untouched")
            return out
        params = {"participant": pid}
        run, finished = None, False
        for line in lines:
            d, kind = line.data, line.data["fvmatch"]
            try:
                if kind == "start":
                    slot = self._slot(line)
                    client = d.get("client") if isinstance(d.get("client"), dict) else {}
                    params = d.get("params") if isinstance(d.get("params"), dict) else {"participant": pid}
                    if participant_from_params(params)[0] != pid:
                        raise RequestError(400, f"the start line's URL parameters name another participant than {pid}")
                    answer = self.study.start({"params": params, "client": client}, slot=slot, at=_iso(d.get("t"), line.where))
                    run = answer["run"]
                    continue
                if run is None:
                    raise RequestError(400, f"a {kind} line before the participant's first start line")
                body = {**d, "params": params, "run": run}
                if kind == "event":
                    self.study.record_event(body)
                elif kind == "trial":
                    self._trial(body, line, out)
                else:
                    self.study.finish(body, at=_iso(d.get("t"), line.where))
                    finished = True
            except RequestError as e:
                msg = e.message if e.message.startswith(line.where) else f"{line.where}: {e.message}"
                out.problems.append(f"{msg} (line not imported)")
        if run is None:
            out.problems.append("no start line: nothing imported")
            return out
        out.trials = len(read_trials(folder))
        out.status = "completed" if finished else "aborted"
        self._record(folder, out, finished, lines)
        return out

    def _trial(self, body: dict, line: Line, out: ImportedSession) -> None:
        try:
            self.study.record_trial(body)
        except RequestError as e:
            saved = read_trials(self.study._folder(out.participant))
            i = body.get("trial_index")
            if e.status == 409 and "already recorded" in e.message and i in set(saved.trial_index):
                row = saved[saved.trial_index == i].iloc[0]
                same = json.loads(row.clicks) == [[round(c[0], 4), c[1], c[2]] for c in body.get("clicks") or []]
                if same:
                    out.duplicates += 1  # the page appended it again (a retry): nothing to do
                    return
                raise RequestError(409, f"{line.where}: trial {i} again with other clicks; the first answer is kept") from e
            raise

    def _record(self, folder: Path, out: ImportedSession, finished: bool, lines: list[Line]) -> None:
        """session.json ``online.jatos``: where the data came from, and what was not imported; partial sessions
        (the browser stopped before the end) are kept as aborted."""
        with SessionLock(folder):
            info = read_session_info(folder)
            info = {k: v for k, v in info.items() if k not in ("schema", "schema_version")}
            info.setdefault("online", {})["jatos"] = {
                "source": str(self.source), "lines": len(lines), "duplicates_ignored": out.duplicates,
                "problems": out.problems, "partial": not finished,
                "why_partial": None if finished else _why_partial(info["n_trials_completed"], info["n_trials_planned"])}
            if not finished:
                info["status"] = "aborted"
                if info.get("runs"):
                    info["runs"][-1].setdefault("status", "aborted")
            write_session_info(folder, info)


def _why_partial(n_done: int, n_planned: int) -> str:
    where = f"after trial {n_done - 1}" if n_done else "before its first trial"
    return f"no finish line: the page stopped {where} ({n_done} of {n_planned} trials recorded)"


def import_results(results: Path, study_dir: Path, data_dir: Path) -> tuple[list[ImportedSession], list[str]]:
    """Import every participant of a JATOS results export; returns the sessions and the lines that belong to none."""
    by_pid, problems = parse_lines(result_texts(results))
    imp = Importer(study_dir, data_dir, results)
    return [imp.import_participant(pid, lines) for pid, lines in by_pid.items()], problems
