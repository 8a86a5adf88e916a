"""``fvmatch-session``: Run a participant session of the matching task (PsychoPy)."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  fvmatch-session --stimuli data/stimuli/demo --participant P01 --session 1
"""


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="fvmatch-session", description="Run a participant session of the matching task (PsychoPy).", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    raise SystemExit("fvmatch-session: not implemented yet")


if __name__ == "__main__":
    raise SystemExit(main())
