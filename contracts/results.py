"""Contract 3: analysis results, ``data/results/<name>/``.

Layout::

    results.json                 provenance: inputs (sessions, stimulus sets, manifest hashes),
                                 exclusions, options and seeds, software, list of outputs
    accuracy_by_condition.csv    one row per trial_type x layer_group x n_images x level
    accuracy_by_participant.csv  the same per participant
    fixed_effects.csv            one row per model x term
    figures/*.png, figures/*.svg
    report.html, report.md
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from contracts.common import ContractError, check_schema, read_json, read_table, require_fields, write_json_atomic

SCHEMA = "fvmatch.results"
SCHEMA_VERSION = "1.3"  # 1.1: exclusions.session_problems; model_tests.csv F and ddf; session_modes;
# 1.2: exclusions.rules (file, sha256, thresholds), exclusions.not_evaluated, exclusions.csv;
# 1.3: model_tests.csv sd_share and sd_df (the p-value's reference: analysis.satterthwaite.partly_known_p_value)
RESULTS_FILE = "results.json"
LEVELS = ("row", "trial")  # per matched row (chance 1/3) and whole trial (chance 1/6)
CHANCE = {"row": 1 / 3, "trial": 1 / 6}

TABLES: dict[str, dict[str, str]] = {
    "accuracy_by_condition.csv": {
        "trial_type": "str", "layer_group": "str", "n_images": "int", "level": "str",
        "accuracy": "float", "ci_low": "float", "ci_high": "float", "chance": "float",
        "n_participants": "int", "n_observations": "int",
    },
    "accuracy_by_participant.csv": {
        "participant": "str", "trial_type": "str", "layer_group": "str", "n_images": "int",
        "level": "str", "accuracy": "float", "n_observations": "int",
    },
    "fixed_effects.csv": {
        "model": "str", "term": "str", "estimate": "float", "se": "float",
        "ci_low": "float", "ci_high": "float",
    },
}

RESULTS_FIELDS: dict[str, type | tuple[type, ...]] = {
    "created": str,
    "inputs": dict,  # {"sessions": [...], "stimulus_sets": [{"set_id", "manifest_sha256"}], ...}
    "exclusions": dict,
    "options": dict,  # every analysis option and seed
    "software": dict,
    "outputs": list,  # relative paths of every file written
}


def write_results_info(folder: os.PathLike | str, info: dict) -> Path:
    path = Path(folder) / RESULTS_FILE
    full = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **info}
    require_fields(path, full, RESULTS_FIELDS)
    write_json_atomic(path, full)
    return path


def load_results(folder: os.PathLike | str) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Read results.json and every contract table; validate both."""
    folder = Path(folder)
    path = folder / RESULTS_FILE
    info = read_json(path)
    check_schema(path, info, SCHEMA, int(SCHEMA_VERSION.split(".")[0]))
    require_fields(path, info, RESULTS_FIELDS)
    tables = {}
    for name, cols in TABLES.items():
        df = read_table(folder / name, cols, allow_empty=True)
        if "level" in df:
            bad = ~df.level.isin(LEVELS)
            if bad.any():
                i = int(bad.to_numpy().nonzero()[0][0])
                raise ContractError(folder / name, f"column 'level', row {i + 1}: {df.level.iloc[i]!r} is not one of {LEVELS}")
        tables[name] = df
    for rel in info["outputs"]:
        if not (folder / rel).is_file():
            raise ContractError(path, f"listed output {rel!r} is missing")
    return info, tables
