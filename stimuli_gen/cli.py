"""``fvmatch-stimuli``: generate a stimulus set (placeholder until the generator issues land)."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  fvmatch-stimuli --builtin-collection data/collections/builtin
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fvmatch-stimuli",
        description="Generate a stimulus set: sample units of GoogLeNet, find natural exemplars, render feature visualizations.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--builtin-collection", metavar="DIR", help="write the built-in natural-image collection to DIR and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.builtin_collection:
        from stimuli_gen.builtin_collection import write_builtin_collection

        paths = write_builtin_collection(args.builtin_collection)
        print(f"wrote {len(paths)} images to {args.builtin_collection}")
        return 0
    build_parser().print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
