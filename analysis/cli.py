"""``fvmatch-analyze``: accuracy by condition and mixed-effects models of matching sessions."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  fvmatch-analyze data/sessions/demo --out data/results/demo
  fvmatch-analyze data/sessions/pilot/sub-P01_ses-01 data/sessions/pilot/sub-P02_ses-01 --out data/results/p12
  fvmatch-analyze data/sessions/main --out data/results/main --exclusions prereg/exclusions.toml --incomplete exclude \\
      --n-as numeric --n-boot 5000 --seed 7
  fvmatch-analyze --simulate 30 --out data/results/sim30     # simulate the default design, then analyse
  fvmatch-analyze --simulate 30 --design my_lab.toml --out data/results/sim30_lab

outputs (contracts/results.py): results.json, accuracy_by_condition.csv, accuracy_by_participant.csv,
fixed_effects.csv, extra tables (models, model_tests, model_contrasts, random_effects, catch_accuracy,
exclusions: every session by the exclusion rules),
figures/*.png|svg, report.html (self-contained), report.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fvmatch-analyze",
        description="Analyse matching sessions: accuracy per condition (per row, chance 1/3; per trial, chance 1/6) "
                    "with bootstrap CIs over participants, binomial GLMMs with crossed participant and unit effects, "
                    "tests of the layer effect and the trial type x layer interaction, figures and a report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sessions", nargs="*", metavar="SESSIONS",
                   help="an experiment folder holding session folders, or session folders (or their session.json)")
    p.add_argument("--out", required=True, metavar="RESULTS_DIR", help="folder for the results (created)")
    p.add_argument("--exclusions", metavar="TOML", default=None,
                   help="exclusion rules (catch accuracy, time on instructions, time in the session, choice "
                        "variability), the same for lab and online sessions; its sha256 is recorded "
                        "(default: the shipped analysis/exclusions.toml, which documents every key)")
    p.add_argument("--min-catch-accuracy", type=float, default=None, metavar="P",
                   help="replace the rules' catch.min_accuracy: exclude sessions whose whole-trial accuracy on catch "
                        "trials is below P (recorded as an override)")
    p.add_argument("--incomplete", choices=("include", "exclude"), default="include",
                   help="trials of aborted/unfinished sessions: keep them (default) or drop the session; listed either way")
    p.add_argument("--n-as", choices=("factor", "numeric"), default="factor",
                   help="n images per unit in the models: factor (default) or numeric, centred")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of participants (default 2000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the bootstrap and of the model fits (default 1)")
    p.add_argument("--fe-prior-sd", type=float, default=10.0,
                   help="prior SD of fixed effects, logit scale (default 10: negligible unless a cell is all right or "
                        "all wrong)")
    p.add_argument("--models", nargs="+", choices=("glmm_trial", "glmm_row"), default=["glmm_trial"], metavar="MODEL",
                   help="models to fit: glmm_trial (default; the primary whole-trial GLMM) and/or glmm_row (per-row "
                        "correctness; its tests are not calibrated, see analysis/README.md)")
    p.add_argument("--no-models", action="store_true", help="accuracy tables and figures only")
    p.add_argument("--no-figures", action="store_true", help="tables and report without figures (faster)")
    p.add_argument("--allow-mixed-sets", action="store_true", help="analyse sessions of different stimulus sets together")
    p.add_argument("--allow-mixed-designs", action="store_true", help="analyse sessions of different designs together")
    p.add_argument("--simulate", type=int, metavar="N", default=0,
                   help="simulate N participants (analysis.simulate, seeded by --seed) of --design into "
                        "RESULTS_DIR/sessions first")
    p.add_argument("--design", default="default", metavar="NAME_OR_TOML",
                   help="with --simulate: the experiment design the simulated participants follow, a shipped name "
                        "(experiment/designs) or a TOML path (default: default)")
    p.add_argument("--units-per-group", type=int, default=10, metavar="K",
                   help="with --simulate: units per layer group of the simulated stimulus set (default 10)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pathlib import Path

    from analysis.load import InputError
    from analysis.pipeline import AnalysisOptions, run_analysis
    from contracts.common import ContractError

    inputs = list(args.sessions)
    if args.simulate:
        from analysis.simulate import SimulationSpec, write_sessions
        from experiment.config import ConfigError

        try:
            spec = SimulationSpec.from_design(args.design, units_per_group=args.units_per_group,
                                              n_participants=args.simulate)
        except (ConfigError, FileNotFoundError, ValueError) as e:
            print(f"fvmatch-analyze: error: --design {args.design}: {e}", file=sys.stderr)
            return 2
        root = Path(args.out) / "sessions"
        write_sessions(root, spec, seed=args.seed)
        inputs.append(str(root / "sim"))
    if not inputs:
        print("fvmatch-analyze: error: give SESSIONS (a folder of session folders) or --simulate N", file=sys.stderr)
        return 2
    opts = AnalysisOptions(min_catch_accuracy=args.min_catch_accuracy, exclusions=args.exclusions, incomplete=args.incomplete, n_boot=args.n_boot,
                           seed=args.seed, n_as=args.n_as, fe_prior_sd=args.fe_prior_sd,
                           allow_mixed_sets=args.allow_mixed_sets, allow_mixed_designs=args.allow_mixed_designs,
                           fit_models=not args.no_models, models=tuple(args.models), figures=not args.no_figures)
    try:
        res = run_analysis(inputs, args.out, opts)
    except (ContractError, InputError, ValueError) as e:
        print(f"fvmatch-analyze: error: {e}", file=sys.stderr)
        return 2
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    ex = res.info["exclusions"]
    print(f"analysed {ex['n_trials_analysed']} trials of {ex['n_participants_analysed']} participants; "
          f"excluded {len(ex['excluded_participants'])} session(s) by the rules in {ex['rules']['source']}")
    for e in ex["excluded_participants"]:
        print(f"  excluded {e['participant']} session {e['session']}: {e['reason']}")
    for f in res.fits:
        lay = f.tests[f.tests.test.str.startswith("layer")] if len(f.tests) else None
        inter = f.tests[f.tests.test.str.contains("interaction")] if len(f.tests) else None
        def fmt(t):
            if t is None or t.empty or not t.df.iloc[0]:
                return "not testable"
            if "ddf" in t and t.ddf.notna().iloc[0]:
                return f"F({int(t.df.iloc[0])}, {t.ddf.iloc[0]:.1f}) = {t.F.iloc[0]:.2f}, p = {t.p_value.iloc[0]:.3g}"
            return f"chi2({int(t.df.iloc[0])}) = {t.chi2.iloc[0]:.2f}, p = {t.p_value.iloc[0]:.3g}"
        print(f"{f.name:14s} [{f.status}] layer: {fmt(lay)}; type x layer: {fmt(inter)}")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
