"""What every benchmark prints about the machine it ran on (shared by the scripts in bench/)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float:
    """1-minute load average (NaN where the OS has none): a loaded machine makes every figure slower."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
