"""Helpers shared by the contract readers and writers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pandas as pd


class ContractError(ValueError):
    """A file does not follow its documented contract. The message names the file and field."""

    def __init__(self, path: os.PathLike | str, message: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


def sha256_file(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys), for provenance fingerprints."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def software_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Versions of Python, the OS and the packages whose behaviour shapes the data."""
    names = ["fvmatch", "numpy", "pandas", *extra]
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_json_atomic(path: os.PathLike | str, obj: Any) -> None:
    """Write JSON via a temporary file and rename, so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: os.PathLike | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ContractError(path, "file not found")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ContractError(path, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    if not isinstance(obj, dict):
        raise ContractError(path, "top level must be a JSON object")
    return obj


def check_schema(path: Path, obj: dict, schema: str, supported_major: int) -> None:
    """Check the ``schema`` name and that ``schema_version`` has a major version we can read."""
    if obj.get("schema") != schema:
        raise ContractError(path, f"field 'schema' is {obj.get('schema')!r}, expected {schema!r}")
    version = obj.get("schema_version")
    if not isinstance(version, str) or not version.split(".")[0].isdigit():
        raise ContractError(path, f"field 'schema_version' is {version!r}, expected a string like '1.0'")
    if int(version.split(".")[0]) != supported_major:
        raise ContractError(
            path, f"schema_version {version} is not supported by this fvmatch (reads {supported_major}.x)"
        )


@dataclass(frozen=True)
class JsonDocument:
    """A versioned JSON file of the contract: written with its ``schema`` and ``schema_version``, and checked the
    same way on writing and on reading (the schema name, a readable major version, then ``validate``)."""

    schema: str
    version: str
    validate: Callable[[Path, dict], None]

    def check(self, path: Path, obj: dict) -> None:
        check_schema(path, obj, self.schema, int(self.version.split(".")[0]))
        self.validate(path, obj)

    def write(self, path: Path, body: dict) -> Path:
        full = {"schema": self.schema, "schema_version": self.version, **body}
        self.check(path, full)
        write_json_atomic(path, full)
        return path

    def read(self, path: Path) -> dict:
        obj = read_json(path)
        self.check(path, obj)
        return obj


def require_fields(path: Path, obj: dict, fields: dict[str, type | tuple[type, ...]], where: str = "") -> None:
    """Each named field must exist and have the given type."""
    for name, typ in fields.items():
        label = f"{where}{name}"
        if name not in obj:
            raise ContractError(path, f"missing field '{label}'")
        if not isinstance(obj[name], typ):
            want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise ContractError(path, f"field '{label}' is {type(obj[name]).__name__}, expected {want}")


def read_table(path: os.PathLike | str, columns: dict[str, str], allow_empty: bool = False,
               text: str | None = None) -> pd.DataFrame:
    """Read a CSV and check required columns and their kinds.

    ``columns`` maps column name to one of ``str``, ``int``, ``float``, ``bool``. Extra columns are
    kept (forward compatible). Errors name the file, the column and the first bad row (1-based data row).
    ``text``: the file's content, already read (and checked) by the caller; ``path`` then names it in errors.
    """
    path = Path(path)
    if text is None and not path.is_file():
        raise ContractError(path, "file not found")
    try:
        df = pd.read_csv(io.StringIO(text) if text is not None else path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as e:
        raise ContractError(path, "file is empty (no header row)") from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ContractError(path, f"not a readable CSV table: {e}") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ContractError(path, f"missing column(s) {', '.join(missing)}")
    if df.empty and not allow_empty:
        raise ContractError(path, "table has no rows")
    for col, kind in columns.items():
        df[col] = _convert(path, df[col], col, kind)
    return df


_TRUE = {"1", "true", "True", "TRUE"}
_FALSE = {"0", "false", "False", "FALSE"}


def _convert(path: Path, s: pd.Series, col: str, kind: str) -> pd.Series:
    def bad(mask: pd.Series, what: str):
        row = int(mask.to_numpy().nonzero()[0][0])
        raise ContractError(path, f"column '{col}', row {row + 1}: {s.iloc[row]!r} is not {what}")

    if kind == "str":
        return s
    if kind == "bool":
        ok = s.isin(_TRUE | _FALSE)
        if not ok.all():
            bad(~ok, "a boolean (0/1)")
        return s.isin(_TRUE)
    num = pd.to_numeric(s, errors="coerce")
    if kind == "float":
        # Empty cells are allowed for floats (e.g. RT of a trial without a click) and read as NaN.
        badmask = num.isna() & (s != "")
        if badmask.any():
            bad(badmask, "a number")
        return num.astype(float)
    if kind == "int":
        badmask = num.isna() | (num != num.round())
        if badmask.any():
            bad(badmask, "an integer")
        return num.astype("int64")
    raise ValueError(f"unknown column kind {kind!r}")
