"""``fvmatch-analyze``: Analyse sessions: accuracy by condition and mixed-effects models."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  fvmatch-analyze data/sessions/demo --out data/results/demo
"""


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="fvmatch-analyze", description="Analyse sessions: accuracy by condition and mixed-effects models.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    raise SystemExit("fvmatch-analyze: not implemented yet")


if __name__ == "__main__":
    raise SystemExit(main())
