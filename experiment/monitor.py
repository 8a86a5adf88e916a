"""The lab's screen as PsychoPy sees it: Monitor Center calibration and the refresh rate.

PsychoPy is imported inside the functions (``monitors`` needs no display, ``visual`` does).

* **Monitor Center.** When ``monitor.name`` names a calibration saved with PsychoPy's Monitor Center
  (a ``<name>.json`` in PsychoPy's monitors folder), it is loaded: its gamma is used by the window,
  and its width, distance and pixel size must agree with the design's ``[monitor]`` (all stimulus
  sizes are computed from those), otherwise the session refuses to start naming both values.
  Without one, a temporary monitor is built from the design (gamma 1, uncalibrated) and that is
  said once, in plain words, instead of PsychoPy's "Monitor specification not found" warning.
* **Refresh rate.** The design states ``monitor.refresh_hz``. The measured rate is recorded next to
  it; a rate that differs by more than ``REFRESH_TOLERANCE`` or cannot be measured is recorded as such
  and warned about, and dropped frames are then judged against the expected rate.
"""

from __future__ import annotations

import json

REFRESH_TOLERANCE = 0.05  # relative difference between measured and expected refresh rate that is warned about
_MATCH_TOLERANCE = 0.005  # relative difference between a saved calibration and the design's monitor values


def open_monitor(mon_cfg: dict, design_path: str = "design"):
    """A ``psychopy.monitors.Monitor`` for the design's ``[monitor]`` table, and the record of what was
    used (``session.json`` run record ``monitor_center``). Raises ValueError when a saved calibration
    disagrees with the design."""
    from psychopy import logging, monitors
    from psychopy.monitors import calibTools

    name = mon_cfg["name"]
    folder = str(calibTools.monitorFolder)
    if name in monitors.getAllMonitors():
        mon = monitors.Monitor(name, autoLog=False)
        problems = []
        for key, saved, want in (("width_cm", mon.getWidth(), mon_cfg["width_cm"]),
                                 ("distance_cm", mon.getDistance(), mon_cfg["distance_cm"])):
            if saved and abs(float(saved) - float(want)) > _MATCH_TOLERANCE * float(want):
                problems.append(f"monitor.{key} = {want} but the calibration says {saved}")
        size = mon.getSizePix()
        if size and [int(v) for v in size] != [int(v) for v in mon_cfg["resolution"]]:
            problems.append(f"monitor.resolution = {list(mon_cfg['resolution'])} but the calibration says {list(size)}")
        if problems:
            raise ValueError(f"{design_path}: monitor.name = {name!r} names a Monitor Center calibration "
                             f"({folder}) that disagrees with the design: " + "; ".join(problems)
                             + ". Fix the design or the calibration so both describe the same screen.")
        gamma = mon.getGamma()
        record = {"loaded": True, "name": name, "folder": folder, "calibration": mon.currentCalibName,
                  "calib_date": str(mon.getCalibDate()) if mon.getCalibDate() else None,
                  "gamma": [float(g) for g in gamma] if gamma is not None and hasattr(gamma, "__iter__")
                  else (float(gamma) if gamma is not None else None)}
    else:
        # PsychoPy logs "Monitor specification not found" here; the record and the message below say it plainly.
        logging.flush()
        level = logging.console.level
        logging.console.setLevel(logging.ERROR)
        try:
            mon = monitors.Monitor(name, autoLog=False)
            logging.flush()
        finally:
            logging.console.setLevel(level)
        record = {"loaded": False, "name": name, "folder": folder, "calibration": None, "calib_date": None, "gamma": None,
                  "note": f"no Monitor Center calibration named {name!r}: sizes from the design, gamma not corrected"}
    mon.setWidth(mon_cfg["width_cm"])
    mon.setDistance(mon_cfg["distance_cm"])
    mon.setSizePix(list(mon_cfg["resolution"]))
    return mon, record


def refresh_record(expected_hz: float, measured_hz: float | None, measured: bool, why_not: str = "") -> tuple[dict, str | None]:
    """What to record about the refresh rate, and a warning to print (or None). Pure.

    ``measured`` says whether a measurement was attempted; ``measured_hz`` is None when it failed.
    The frame period used to count dropped frames is the measured one only when it agrees with the
    expected rate; otherwise the expected one.
    """
    rec = {"expected_hz": float(expected_hz), "measured_hz": round(float(measured_hz), 3) if measured_hz else None,
           "status": "", "frame_period_ms": round(1000.0 / expected_hz, 3)}
    if not measured:
        rec["status"] = "not measured"
        rec["note"] = why_not or "not measured"
        return rec, None
    if not measured_hz:
        rec["status"] = "could not be measured"
        return rec, (f"the refresh rate could not be measured (no consistent frame rate); frame timing is judged "
                     f"against the expected {expected_hz:g} Hz and may be wrong: check the display settings")
    if abs(measured_hz - expected_hz) > REFRESH_TOLERANCE * expected_hz:
        rec["status"] = "differs from expected"
        return rec, (f"the screen refreshes at {measured_hz:.1f} Hz, but the design expects monitor.refresh_hz = "
                     f"{expected_hz:g}: set the display to {expected_hz:g} Hz or change the design")
    rec["status"] = "as expected"
    rec["frame_period_ms"] = round(1000.0 / measured_hz, 3)
    return rec, None


def measure_refresh(win, expected_hz: float, attempt: bool, why_not: str = "") -> tuple[dict, str | None]:
    """Measure the window's refresh rate (PsychoPy's ``getActualFrameRate``) when ``attempt``; set the
    window's frame period and dropped-frame threshold from the result (see ``refresh_record``)."""
    fps = win.getActualFrameRate(nIdentical=20, nMaxFrames=240, nWarmUpFrames=20, threshold=1) if attempt else None
    rec, warning = refresh_record(expected_hz, fps, attempt, why_not)
    period = rec["frame_period_ms"] / 1000.0
    win.monitorFramePeriod = period
    win.refreshThreshold = 1.2 * period  # PsychoPy's own rule: an interval over 1.2 frame periods is a drop
    return rec, warning


def runtime_info(win) -> dict:
    """PsychoPy's ``RunTimeInfo`` for the open window (graphics driver and OpenGL version, window and
    monitor settings, system, Python), as JSON-able scalars, plus the window's gamma. No refresh test
    here: ``measure_refresh`` does that against the design's rate."""
    from psychopy import info

    rti = info.RunTimeInfo(win=win, refreshTest=None, verbose=True, userProcsDetailed=False)
    out: dict = {}
    for key in rti:
        if key.startswith("systemUserProc") or key in ("psychopyGitHead", "systemRavailable"):
            continue  # other people's processes; unrelated software
        v = rti[key]
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, (list, tuple)):
            v = [x.item() if hasattr(x, "item") else x for x in v]
        out[key] = v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v)[:500]
    gamma = getattr(win, "gamma", None)
    out["windowGamma"] = (gamma.tolist() if hasattr(gamma, "tolist") else gamma)
    out["windowUseNativeGamma"] = bool(getattr(win, "useNativeGamma", False))
    return json.loads(json.dumps(out, default=str))  # anything numpy left over becomes text
