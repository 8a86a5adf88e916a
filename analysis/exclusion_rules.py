"""The exclusion-rules config (TOML; the shipped defaults and their meaning are in ``analysis/exclusions.toml``).

One file a lab pre-registers; lab and online sessions are judged by the same rules (``analysis.exclusions``).
Bad files raise ``RulesError`` naming the file and the key.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

SHIPPED_RULES = Path(__file__).with_name("exclusions.toml")

# table -> key -> (default, kind, low, high); the defaults equal the shipped file (a test checks it)
RULE_KEYS: dict[str, dict[str, tuple]] = {
    "catch": {"min_accuracy": (0.7, float, 0.0, 1.0)},
    "instructions": {"min_seconds": (10.0, float, 0.0, 3600.0)},
    "total_time": {"min_minutes": (0.0, float, 0.0, 1440.0), "max_minutes": (120.0, float, 0.0, 1440.0)},
    "choice_variability": {"max_same_fraction": (0.6, float, 0.0, 1.0), "min_trials": (12, int, 1, 100000)},
}


class RulesError(ValueError):
    """An exclusion-rules file that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class ExclusionRules:
    catch_min_accuracy: float = 0.7
    instructions_min_seconds: float = 10.0
    total_min_minutes: float = 0.0
    total_max_minutes: float = 120.0
    variability_max_same_fraction: float = 0.6
    variability_min_trials: int = 12
    source: str = "built-in defaults"  # the file the rules came from
    sha256: str | None = None  # of that file's bytes (None: no file)
    overrides: tuple[str, ...] = ()  # command-line options that replaced a value of the file

    def as_dict(self) -> dict:
        d = asdict(self)
        d["overrides"] = list(self.overrides)
        return d

    def with_catch_accuracy(self, value: float, why: str) -> "ExclusionRules":
        """The rules with the catch threshold replaced (``--min-catch-accuracy``), recorded in ``overrides``."""
        _check_value("command line", "catch.min_accuracy", value, *RULE_KEYS["catch"]["min_accuracy"][1:])
        d = self.as_dict()
        d.update(catch_min_accuracy=float(value), overrides=tuple(self.overrides) + (why,))
        return ExclusionRules(**d)


_FIELD = {("catch", "min_accuracy"): "catch_min_accuracy", ("instructions", "min_seconds"): "instructions_min_seconds",
          ("total_time", "min_minutes"): "total_min_minutes", ("total_time", "max_minutes"): "total_max_minutes",
          ("choice_variability", "max_same_fraction"): "variability_max_same_fraction",
          ("choice_variability", "min_trials"): "variability_min_trials"}


def _check_value(where: str, key: str, value, kind: type, lo, hi) -> None:
    ok_type = (isinstance(value, int) if kind is int else isinstance(value, (int, float))) and not isinstance(value, bool)
    if not ok_type or (kind is float and not math.isfinite(value)) or not lo <= value <= hi:
        what = "an integer" if kind is int else "a number"
        raise RulesError(f"{where}: key '{key}': must be {what} in [{lo:g}, {hi:g}] (got {value!r})")


def load_rules(path: str | Path | None = None) -> ExclusionRules:
    """Rules from ``path`` (default: the shipped ``analysis/exclusions.toml``); keys left out take the defaults."""
    path = Path(path) if path is not None else SHIPPED_RULES
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise RulesError(f"{path}: exclusion rules file not found") from e
    except OSError as e:
        raise RulesError(f"{path}: cannot read ({e.strerror})") from e
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RulesError(f"{path}: not valid TOML: {e}") from e
    values = {}
    for table, content in raw.items():
        if table not in RULE_KEYS:
            raise RulesError(f"{path}: unknown table [{table}]; expected {', '.join(f'[{t}]' for t in RULE_KEYS)}")
        if not isinstance(content, dict):
            raise RulesError(f"{path}: '{table}' must be a table [{table}]")
        for key, value in content.items():
            if key not in RULE_KEYS[table]:
                raise RulesError(f"{path}: key '{table}.{key}': unknown; expected one of "
                                 f"{', '.join(f'{table}.{k}' for k in RULE_KEYS[table])}")
            _check_value(str(path), f"{table}.{key}", value, *RULE_KEYS[table][key][1:])
            values[_FIELD[(table, key)]] = RULE_KEYS[table][key][1](value)
    rules = ExclusionRules(**values, source=str(path), sha256=hashlib.sha256(data).hexdigest())
    if rules.total_max_minutes and rules.total_min_minutes > rules.total_max_minutes:
        raise RulesError(f"{path}: key 'total_time.min_minutes': {rules.total_min_minutes:g} is above "
                         f"total_time.max_minutes ({rules.total_max_minutes:g})")
    return rules
