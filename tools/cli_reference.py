"""Print the README's command-line reference from the commands' own parsers.

`python tools/cli_reference.py` prints the Markdown; tests/test_readme.py checks that README.md
contains exactly this, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import importlib

COMMANDS = (("fvmatch-stimuli", "stimuli_gen.cli"), ("fvmatch-session", "experiment.cli"), ("fvmatch-analyze", "analysis.cli"),
            ("fvmatch-online", "online.cli"))


def parser_for(module: str) -> argparse.ArgumentParser:
    return importlib.import_module(module).build_parser()


def _parsers(prog: str, parser: argparse.ArgumentParser):
    """(title, parser) for a command, or for each subcommand of a command that has them."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(prog, parser)]
    return [(f"{prog} {name}", sub) for name, sub in subs[0].choices.items()]


def reference() -> str:
    out = []
    for title, parser in [tp for prog, module in COMMANDS for tp in _parsers(prog, parser_for(module))]:
        out.append(f"#### `{title}`\n\n| option | meaning (default) |\n|---|---|")
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            name = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
            text = (action.help or "").replace("|", "\\|").replace("\n", " ")
            if "%(default)" in text:
                text = text % {"default": action.default}
            # Defaults the help text does not state already (flags are off unless given).
            if action.nargs != 0 and action.default not in (None, argparse.SUPPRESS) and "default" not in text:
                text += f" (default: `{action.default}`)"
            out.append(f"| {name} | {text} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
