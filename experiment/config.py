"""Design configs (TOML): read, fill defaults, validate. Pure Python, no PsychoPy.

A config has the tables ``[design]``, ``[practice]``, ``[participant]``, ``[catch]``, ``[display]``,
``[monitor]`` and ``[timing]``; every key is documented in ``experiment/designs/default.toml``. Unknown tables or keys
are errors (a typo must not silently fall back to a default), and every error names the file and key.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DESIGNS_DIR = Path(__file__).parent / "designs"
TRIAL_TYPES = ("exemplar", "feature_vis")
LAYER_GROUPS = ("early", "middle", "late")
N_IMAGES = (1, 3, 5)


class ConfigError(ValueError):
    """A design config is invalid; the message names the file and the key."""

    def __init__(self, path: Path | str, key: str, message: str):
        super().__init__(f"{path}: key '{key}': {message}")


# table -> key -> (type or tuple of types, default; ``...`` = required)
_SCHEMA: dict[str, dict[str, tuple[Any, Any]]] = {
    "design": {
        "name": (str, ...),
        "seed": (int, ...),
        "trial_types": (list, list(TRIAL_TYPES)),
        "layer_groups": (list, list(LAYER_GROUPS)),
        "n_images": (list, list(N_IMAGES)),
        "trials_per_cell": (int, ...),
        "blocks": (int, 1),
        "max_triplet_uses": (int, 1),
        "fv_source": (str, "random"),
        "shared_images": (str, "exclude"),
        "participants_planned": (int, 24),
        "counterbalance": (str, "next_free"),
        "near_duplicate_bits": (int, 2),
        "practice_units": (str, "reserved"),
        "exemplar_ranks": (str, "top"),
    },
    "practice": {
        "trials": (int, 0),
        "trial_types": (list, list(TRIAL_TYPES)),
        "n_images": (list, [3]),
    },
    "participant": {
        "fields": (list, []),
    },
    "catch": {
        "per_block": (int, 0),
        "n_images": (int, 3),
    },
    "display": {
        "image_deg": ((int, float), 3.0),
        "image_gap_deg": ((int, float), 0.25),
        "row_gap_deg": ((int, float), 1.2),
        "side_gap_deg": ((int, float), 6.0),
        "frame_deg": ((int, float), 0.15),
        "text_deg": ((int, float), 0.8),
        "background": (list, [0.0, 0.0, 0.0]),
        "pair_colors": (list, ["#E69F00", "#56B4E9", "#CC79A7"]),
        "reference_side": (str, "counterbalanced"),
    },
    "monitor": {
        "name": (str, "fvmatch_monitor"),
        "distance_cm": ((int, float), ...),
        "width_cm": ((int, float), ...),
        "resolution": (list, ...),
        "fullscreen": (bool, True),
        "screen": (int, 0),
        "refresh_hz": ((int, float), 60.0),
    },
    "timing": {
        "iti_s": ((int, float), 0.5),
        "feedback_s": ((int, float), 1.5),
        "min_break_s": ((int, float), 0.0),
    },
}
_REQUIRED_TABLES = ("design", "monitor")


@dataclass(frozen=True)
class Design:
    """A validated design config. ``raw`` is the full config with defaults filled in (JSON-able)."""

    path: str
    raw: dict

    def __getitem__(self, table: str) -> dict:
        return self.raw[table]

    @property
    def name(self) -> str:
        return self.raw["design"]["name"]

    @property
    def seed(self) -> int:
        return self.raw["design"]["seed"]


def shipped_designs() -> list[str]:
    return sorted(p.stem for p in DESIGNS_DIR.glob("*.toml"))


def resolve_design_path(name_or_path: str) -> Path:
    """A shipped design name (``demo``, ``default``) or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ConfigError(p, "-", "design file not found")
        return p
    shipped = DESIGNS_DIR / f"{name_or_path}.toml"
    if not shipped.is_file():
        raise ConfigError(name_or_path, "-", f"no such design file, and not a shipped design (shipped: {', '.join(shipped_designs())})")
    return shipped


def load_design(name_or_path: str) -> Design:
    """Read, fill defaults and validate a design. Raises ConfigError naming the file and key."""
    path = resolve_design_path(name_or_path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "-", f"not valid TOML: {e}") from e
    return design_from_dict(raw, path)


def design_from_dict(raw: dict, path: Path | str = "<config>") -> Design:
    """Validate a config given as a dict (e.g. the ``design`` recorded in a session.json)."""
    raw = copy.deepcopy(raw)
    for table in raw:
        if table not in _SCHEMA:
            raise ConfigError(path, table, f"unknown table; expected some of {', '.join(_SCHEMA)}")
        if not isinstance(raw[table], dict):
            raise ConfigError(path, table, "must be a table")
    for table in _REQUIRED_TABLES:
        if table not in raw:
            raise ConfigError(path, table, "required table is missing")
    out: dict[str, dict] = {}
    for table, keys in _SCHEMA.items():
        given = raw.get(table, {})
        for key in given:
            if key not in keys:
                raise ConfigError(path, f"{table}.{key}", f"unknown key; expected some of {', '.join(keys)}")
        out[table] = {}
        for key, (typ, default) in keys.items():
            full = f"{table}.{key}"
            if key not in given:
                if default is ...:
                    raise ConfigError(path, full, "required key is missing")
                out[table][key] = copy.deepcopy(default)
                continue
            value = given[key]
            types = typ if isinstance(typ, tuple) else (typ,)
            if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                raise ConfigError(path, full, f"must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
            out[table][key] = value
    _check_values(out, path)
    return Design(path=str(path), raw=out)


def _check_values(c: dict, path: Path | str) -> None:
    def fail(key: str, msg: str):
        raise ConfigError(path, key, msg)

    def subset(key: str, values: list, allowed: tuple, allow_empty: bool = False):
        if not values and not allow_empty:
            fail(key, "must not be empty")
        bad = [v for v in values if v not in allowed]
        if bad:
            fail(key, f"{bad[0]!r} is not one of {list(allowed)}")
        if len(set(values)) != len(values):
            fail(key, "has duplicates")

    d = c["design"]
    subset("design.trial_types", d["trial_types"], TRIAL_TYPES)
    subset("design.layer_groups", d["layer_groups"], LAYER_GROUPS)
    subset("design.n_images", d["n_images"], N_IMAGES)
    if d["trials_per_cell"] < 1:
        fail("design.trials_per_cell", "must be at least 1")
    if d["blocks"] < 1:
        fail("design.blocks", "must be at least 1")
    n_main = len(d["trial_types"]) * len(d["layer_groups"]) * len(d["n_images"]) * d["trials_per_cell"]
    if d["blocks"] > n_main:
        fail("design.blocks", f"{d['blocks']} blocks for only {n_main} main trials")
    if d["max_triplet_uses"] < 1:
        fail("design.max_triplet_uses", "must be at least 1 (1 = a triplet never repeats for a participant)")
    if d["fv_source"] not in ("random", "first"):
        fail("design.fv_source", "must be 'random' (a seeded random choice of n visualizations) or 'first' (ranks 0..n-1)")
    if not 0 <= d["participants_planned"] <= 100000:
        fail("design.participants_planned", "must be >= 0 (0: consecutive windows of the study order, as before)")
    if d["counterbalance"] not in ("next_free", "participant_number"):
        fail("design.counterbalance", "must be 'next_free' (the lowest index no participant of the experiment has) "
                                      "or 'participant_number' (the trailing number of the id)")
    if c["display"]["reference_side"] not in ("counterbalanced", "left", "right"):
        fail("display.reference_side", "must be 'counterbalanced' (left for even, right for odd counterbalance "
                                       "indices), 'left' or 'right'")
    if d["shared_images"] not in ("exclude", "allow"):
        fail("design.shared_images", "must be 'exclude' (units showing the same photograph never share a trial) or 'allow'")
    if d["practice_units"] not in ("reserved", "main"):
        fail("design.practice_units", "must be 'reserved' (3 units per layer group only for practice, never in main "
                                      "trials) or 'main' (practice trials show main units)")
    if d["exemplar_ranks"] not in ("top", "fresh"):
        fail("design.exemplar_ranks", "must be 'top' (ranks 0..2n-1, ABBA split) or 'fresh' (per unit, the rank pairs of "
                                      "its top-k this participant has seen least)")
    if not -1 <= d["near_duplicate_bits"] <= 32:
        fail("design.near_duplicate_bits", "must be in [-1, 32] (-1: identical images only)")
    if not 0 <= d["seed"] < 2**63:
        fail("design.seed", "must be a non-negative integer")
    p = c["practice"]
    if p["trials"] < 0:
        fail("practice.trials", "must be >= 0")
    subset("practice.trial_types", p["trial_types"], TRIAL_TYPES)
    subset("practice.n_images", p["n_images"], N_IMAGES)
    fields = c["participant"]["fields"]
    if not all(isinstance(f, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", f) for f in fields):
        fail("participant.fields", "must be names like 'age' or 'handedness' (letters, digits, '_')")
    if len(set(fields)) != len(fields) or {"participant", "session"} & set(fields):
        fail("participant.fields", "has duplicates, or repeats 'participant'/'session' (always asked)")
    if c["catch"]["per_block"] < 0:
        fail("catch.per_block", "must be >= 0")
    if c["catch"]["n_images"] not in N_IMAGES:
        fail("catch.n_images", f"must be one of {list(N_IMAGES)}")
    disp = c["display"]
    for key in ("image_deg", "text_deg"):
        if not 0 < disp[key] <= 20:
            fail(f"display.{key}", "must be in (0, 20] degrees")
    for key in ("image_gap_deg", "row_gap_deg", "side_gap_deg", "frame_deg"):
        if not 0 <= disp[key] <= 20:
            fail(f"display.{key}", "must be in [0, 20] degrees")
    bg = disp["background"]
    if len(bg) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and -1 <= v <= 1 for v in bg):
        fail("display.background", "must be 3 numbers in [-1, 1] (PsychoPy rgb)")
    pc = disp["pair_colors"]
    if len(pc) != 3 or not all(isinstance(v, str) and len(v) == 7 and v.startswith("#") for v in pc):
        fail("display.pair_colors", "must be 3 hex colours like '#E69F00'")
    for v in pc:
        try:
            int(v[1:], 16)
        except ValueError:
            fail("display.pair_colors", f"{v!r} is not a hex colour")
    m = c["monitor"]
    if not 10 <= m["distance_cm"] <= 1000:
        fail("monitor.distance_cm", "must be in [10, 1000] cm")
    if not 5 <= m["width_cm"] <= 500:
        fail("monitor.width_cm", "must be in [5, 500] cm")
    if not 20 <= m["refresh_hz"] <= 500:
        fail("monitor.refresh_hz", "must be in [20, 500] Hz")
    res = m["resolution"]
    if len(res) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 200 <= v <= 16384 for v in res):
        fail("monitor.resolution", "must be [width_px, height_px], integers >= 200")
    from experiment.layout import check_fits, screen_size_deg, trial_layout

    w_deg, h_deg = screen_size_deg(m["width_cm"], m["distance_cm"], res)
    ns = set(d["n_images"]) | (set(p["n_images"]) if p["trials"] else set()) | ({c["catch"]["n_images"]} if c["catch"]["per_block"] else set())
    for n in sorted(ns):
        problem = check_fits(trial_layout(n, disp), w_deg, h_deg)
        if problem:
            fail("display", problem)
    for key in ("iti_s", "feedback_s", "min_break_s"):
        if not 0 <= c["timing"][key] <= 600:
            fail(f"timing.{key}", "must be in [0, 600] seconds")
