"""The online study config (TOML, table ``[online]``): what the browser version needs beyond the design.

Every key is documented in ``online/study.toml``. Unknown keys are errors naming the file and key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from urllib.parse import urlparse

DEFAULTS: dict = {
    "experiment": "",  # data subfolder of the sessions (default: the design's name)
    "completion_url": "",  # Prolific/MTurk completion link the end screen redirects to ("" = none)
    "min_width_px": 1000,  # smallest browser window (CSS px) the task accepts, checked before calibration
    "min_height_px": 600,
    "blindspot_reps": 3,  # virtual-chinrest blind-spot repetitions (0: skip, assume monitor.distance_cm of the design)
    "title": "Image matching study",
}


class OnlineConfigError(ValueError):
    pass


def load_online_config(path: str | Path | None, overrides: dict | None = None) -> dict:
    """Defaults, then the file's ``[online]`` table, then non-None ``overrides``; validated."""
    cfg = dict(DEFAULTS)
    where = str(path) if path else "command line"
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise OnlineConfigError(f"{path}: online config not found") from e
        except tomllib.TOMLDecodeError as e:
            raise OnlineConfigError(f"{path}: not valid TOML: {e}") from e
        extra = [k for k in raw if k != "online"]
        if extra:
            raise OnlineConfigError(f"{path}: unknown table {extra[0]!r}; expected [online]")
        for key, value in raw.get("online", {}).items():
            if key not in DEFAULTS:
                raise OnlineConfigError(f"{path}: key 'online.{key}': unknown; expected one of {', '.join(DEFAULTS)}")
            cfg[key] = value
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    _check(cfg, where)
    return cfg


def _check(cfg: dict, where: str) -> None:
    def fail(key: str, msg: str):
        raise OnlineConfigError(f"{where}: key 'online.{key}': {msg} (got {cfg[key]!r})")

    for key in ("experiment", "completion_url", "title"):
        if not isinstance(cfg[key], str):
            fail(key, "must be a string")
    url = cfg["completion_url"]
    if url and urlparse(url).scheme not in ("https", "http"):
        fail("completion_url", "must be an http(s) URL")
    for key, lo, hi in (("min_width_px", 300, 10000), ("min_height_px", 300, 10000), ("blindspot_reps", 0, 20)):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            fail(key, f"must be an integer in [{lo}, {hi}]")
