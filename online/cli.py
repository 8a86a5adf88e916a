"""``fvmatch-online``: export the matching task as a static online study, and serve it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  # the study folder: task (jsPsych bundled), the images the design uses (checked against the manifest)
  fvmatch-online export --stimuli data/stimuli/study1 --design default --online-config online/study.toml --out data/online/study1

  # serve it (pilots, lab networks); sessions land in data/sessions/<experiment>/ like lab sessions
  fvmatch-online serve data/online/study1 --data-dir data/sessions --host 0.0.0.0 --port 8000
  # participants open  http://HOST:8000/?PROLIFIC_PID=...&STUDY_ID=...&SESSION_ID=...  (or ?workerId=... or ?participant=...)

exit status: 0 ok, 2 bad input or refused
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fvmatch-online", description="Export the matching task as an online study (jsPsych) and serve it.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="stimulus set + design -> a static study folder")
    e.add_argument("--stimuli", required=True, metavar="DIR", help="stimulus set folder")
    e.add_argument("--design", default="default", metavar="NAME|FILE", help="shipped design name or a TOML file (default: %(default)s)")
    e.add_argument("--online-config", metavar="TOML", help="online settings (online/study.toml documents every key)")
    e.add_argument("--experiment", metavar="NAME", help="experiment name, the sessions' data subfolder (default: config, else the design's name)")
    e.add_argument("--completion-url", metavar="URL", help="where the end screen sends participants (Prolific/MTurk completion link)")
    e.add_argument("--out", required=True, metavar="DIR", help="study folder to write")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    s = sub.add_parser("serve", help="serve an exported study and record each trial as it arrives")
    s.add_argument("study", metavar="STUDY_DIR", help="folder written by `fvmatch-online export`")
    s.add_argument("--data-dir", default="data/sessions", metavar="DIR", help="root of session data (default: %(default)s)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for a lab network)")
    s.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    return p


def _fail(msg: str) -> int:
    print(f"fvmatch-online: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from contracts.common import ContractError

    if args.command == "export":
        from contracts.stimulus_set import load_stimulus_set
        from experiment.config import ConfigError, load_design
        from online.config import OnlineConfigError, load_online_config
        from online.export import ExportError, export_study

        try:
            design = load_design(args.design)
            online = load_online_config(args.online_config, {"experiment": args.experiment, "completion_url": args.completion_url})
            stimset = load_stimulus_set(args.stimuli)
            path = export_study(stimset, design, Path(args.out), online, overwrite=args.overwrite)
        except (ConfigError, OnlineConfigError, ContractError, ExportError, OSError) as e:
            return _fail(str(e))
        n_img = len(list((path.parent / "img").iterdir()))
        print(f"wrote {path.parent} ({n_img} images checked against the manifest)")
        if stimset.random_weights:
            print("WARNING: this stimulus set was made with RANDOM WEIGHTS: not meaningful for a study")
        print(f"serve it: fvmatch-online serve {path.parent} --data-dir data/sessions")
        return 0

    from online.server import serve_forever
    from online.sessions import OnlineStudy

    try:
        study = OnlineStudy(Path(args.study), Path(args.data_dir))
    except (ContractError, ValueError, OSError) as e:
        return _fail(str(e))
    print(f"serving {args.study} (experiment {study.experiment}) on http://{args.host}:{args.port}/ ; "
          f"sessions in {Path(args.data_dir) / study.experiment}; Ctrl-C stops")
    serve_forever(study, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
