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

  # or run it on JATOS: a study archive to import there (trial lists for 60 participants, each trial appended to the
  # JATOS result as it happens), then the JATOS results export into session folders
  fvmatch-online jatos-export data/online/study1 --slots 60 --out data/online/study1.jzip
  fvmatch-online jatos-import jatos_results.zip --study data/online/study1 --data-dir data/sessions

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
    j = sub.add_parser("jatos-export", help="exported study -> a JATOS study archive (.jzip) with precomputed trial lists")
    j.add_argument("study", metavar="STUDY_DIR", help="folder written by `fvmatch-online export`")
    j.add_argument("--slots", type=int, default=60, metavar="N",
                   help="trial lists (counterbalance indices 0..N-1) in the package; participant N+1 reuses slot 0 "
                        "(default: %(default)s)")
    j.add_argument("--out", required=True, metavar="FILE.jzip", help="archive to write")
    j.add_argument("--overwrite", action="store_true", help="replace an existing archive")
    i = sub.add_parser("jatos-import", help="JATOS results export (text or zip of appended lines) -> session folders")
    i.add_argument("results", metavar="RESULTS", help="JATOS results: the exported text file or results zip")
    i.add_argument("--study", required=True, metavar="STUDY_DIR", help="the study folder the .jzip was made from")
    i.add_argument("--data-dir", default="data/sessions", metavar="DIR", help="root of session data (default: %(default)s)")
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

    if args.command == "jatos-export":
        from online.jatos_export import JatosExportError, export_jatos

        try:
            out = export_jatos(Path(args.study), Path(args.out), args.slots, args.overwrite)
        except (JatosExportError, ContractError, ValueError, OSError) as e:
            return _fail(str(e))
        print(f"wrote {out} ({args.slots} trial lists); import it in JATOS, then after data collection: "
              f"fvmatch-online jatos-import RESULTS --study {args.study} --data-dir data/sessions")
        return 0

    if args.command == "jatos-import":
        from online.jatos_import import JatosImportError, import_results

        try:
            sessions, unused = import_results(Path(args.results), Path(args.study), Path(args.data_dir))
        except (JatosImportError, ContractError, ValueError, OSError) as e:
            return _fail(str(e))
        for s in sessions:
            print(f"{s.participant}: {s.status}, {s.trials} trials" + (f", {s.duplicates} repeated line(s) ignored" if s.duplicates else "")
                  + (f" -> {s.folder}" if s.status != "skipped" else ""))
            for p in s.problems:
                print(f"  problem: {p}", file=sys.stderr)
        for p in unused:
            print(f"problem: {p}", file=sys.stderr)
        partial = sum(s.status == "aborted" for s in sessions)
        print(f"imported {sum(s.status != 'skipped' for s in sessions)} session(s) ({partial} partial, kept as aborted); "
              f"{sum(len(s.problems) for s in sessions) + len(unused)} problem(s) listed above and in session.json online.jatos")
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
