"""Frame-timing records: per trial (``trials.csv``) and per session (``session.json`` frame_stats).
Pure Python, no PsychoPy: the window's flip intervals come in as numbers.

A trial's ``frames`` are its flips from onset to Confirm; the Escape question's flips are neither
frames nor drops (the runner stops recording intervals while it is up), so frames and drops count
the same flips.
"""

from __future__ import annotations

import statistics


def trial_frame_stats(n_flips: int, intervals_s: list[float], dropped: int) -> dict:
    """One trial's frame columns from its flip count, its recorded flip intervals (seconds) and the
    window's dropped-frame count during it."""
    intervals = [1000 * x for x in intervals_s]
    return {"frames": n_flips, "frames_dropped": dropped,
            "frame_interval_mean_ms": round(statistics.fmean(intervals), 3) if intervals else None,
            "frame_interval_sd_ms": round(statistics.stdev(intervals), 3) if len(intervals) > 1 else None}


def new_run_totals() -> dict:
    """Running sums of one run's trials, for ``merge_frame_stats``."""
    return {"trials": 0, "frames": 0, "frames_dropped": 0, "intervals": 0, "intervals_ms_sum": 0.0}


def add_trial(totals: dict, row: dict, n_intervals: int) -> None:
    """Add a finished trial's frame columns (a trials.csv row) to a run's totals."""
    totals["frames"] += row["frames"]
    totals["frames_dropped"] += row["frames_dropped"]
    totals["intervals"] += n_intervals
    totals["intervals_ms_sum"] += (row["frame_interval_mean_ms"] or 0.0) * n_intervals


def merge_frame_stats(old: dict, totals: dict) -> dict:
    """Session-wide frame statistics over all runs (trials only, not instruction or break screens)."""
    frames = old.get("frames", 0) + totals["frames"]
    dropped = old.get("frames_dropped", 0) + totals["frames_dropped"]
    n_int = old.get("frame_intervals", 0) + totals["intervals"]
    sum_ms = old.get("frame_interval_sum_ms", 0.0) + totals["intervals_ms_sum"]
    return {"frames": frames, "frames_dropped": dropped, "frame_intervals": n_int, "frame_interval_sum_ms": round(sum_ms, 3),
            "frame_interval_mean_ms": round(sum_ms / n_int, 3) if n_int else None}

