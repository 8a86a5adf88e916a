"""Power of the primary GLMM's layer and trial type x layer tests over participants x units per layer group.
A thin wrapper of ``python -m analysis.power`` (same options) that works from a checkout without installing.

    .venv/bin/python tools/power_analysis.py --out data/results/power --participants 12 24 40 --units 10 20
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.power import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
