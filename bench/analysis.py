"""Benchmark: time to fit the GLMMs for 40 participants x 432 trials (simulated), with baselines in the same run.

Rows: the primary trial-level GLMM (analysis.laplace: SDs from their Laplace marginal posterior, fixed effects
integrated out), the same model by statsmodels' fit_vb (zero start; then started at the posterior mode), fit_map
alone (faster, but shrinks variance components), and the per-row GLMM (3x the observations, trial-clustered
sandwich). Also the BLAS-thread setting: the fits run with one BLAS
thread (analysis.glmm does this); the last row repeats the primary fit with the default thread count.
The analysis runs on the CPU only (statsmodels/scipy); no accelerator is used. Each row reports wall seconds and
CPU seconds of this process: on a shared machine quote the CPU figure (and the load average printed first).
The primary fit includes what a report computes: the SDs' likelihood-ratio intervals and the Satterthwaite df.

    .venv/bin/python bench/analysis.py                 # 40 x 432
    .venv/bin/python bench/analysis.py --quick         # 12 x 144, a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import cpu_name, load_average  # noqa: E402  (bench/ is on sys.path: scripts run from it)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import glmm  # noqa: E402
from analysis.simulate import SimulationSpec, simulate_trials, true_fixed_effects  # noqa: E402
from contracts.common import software_versions  # noqa: E402


def machine() -> str:
    sw = software_versions(["statsmodels", "scipy"])
    return (f"device: CPU ({cpu_name()}; {os.cpu_count()} logical cores visible, load average {load_average():.1f})\n"
            f"python {sw['python']}, numpy {sw['numpy']}, scipy {sw['scipy']}, statsmodels {sw['statsmodels']}; "
            f"{sw['platform']}")


def run(name: str, fn, trials, opts) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    fit = fn(trials, opts)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    fx = fit.fixed.set_index("term") if len(fit.fixed) else pd.DataFrame()
    sd = dict(zip(fit.random.component, fit.random.sd)) if len(fit.random) else {}
    return {"fit": name, "obs": fit.n_obs, "seconds": dt, "cpu_s": cpu, "iterations": fit.iterations, "status": fit.status,
            "fv": fx.estimate.get("type[T.feature_vis]", np.nan), "se_fv": fx.se.get("type[T.feature_vis]", np.nan),
            "late": fx.estimate.get("layer[T.late]", np.nan), "sd_participant": sd.get("participant", np.nan),
            "sd_unit": sd.get("unit", np.nan)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--participants", type=int, default=40)
    ap.add_argument("--trials", type=int, default=432, help="main trials per participant (a multiple of 18)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--quick", action="store_true", help="12 participants x 144 trials")
    args = ap.parse_args(argv)
    if args.quick:
        args.participants, args.trials = 12, 144
    spec = SimulationSpec(n_participants=args.participants, reps_per_cell=max(1, args.trials // 18),
                          units_per_group=20)
    trials, _ = simulate_trials(spec, args.seed)
    main_trials = trials[~trials.is_practice & ~trials.is_catch].reset_index(drop=True)
    print(machine())
    print(f"data: {args.participants} participants x {len(main_trials) // args.participants} main trials "
          f"({len(main_trials)} trials, {3 * len(main_trials)} rows), {3 * spec.units_per_group} units, seed {args.seed}")
    truth = true_fixed_effects(spec, "factor")
    print(f"truth (trial logit): feature_vis {truth['type[T.feature_vis]']:+.3f}, late {truth['layer[T.late]']:+.3f}, "
          f"sd participant {spec.sd_participant}, sd unit {spec.sd_unit}")
    base = glmm.ModelOptions(n_as="factor", seed=0)
    vb = glmm.ModelOptions(n_as="factor", seed=0, estimator="vb")
    rows = [
        run("trial GLMM, laplace + Hessian SE (primary)", glmm.fit_trial_glmm, main_trials, base),
        run("trial GLMM, fit_vb + Hessian SE", glmm.fit_trial_glmm, main_trials, vb),
        run("trial GLMM, fit_vb started at the MAP", glmm.fit_trial_glmm, main_trials,
            glmm.ModelOptions(n_as="factor", seed=0, estimator="vb", vb_start="map")),
        run("trial GLMM, fit_map only (baseline)", glmm.fit_trial_glmm, main_trials,
            glmm.ModelOptions(n_as="factor", seed=0, estimator="map")),
        run("row GLMM, laplace + trial-clustered sandwich", glmm.fit_row_glmm, main_trials, base),
    ]
    # The same primary fit with BLAS's default threads (the decorator is bypassed through __wrapped__).
    raw = glmm.fit_bayes_glmm.__wrapped__
    orig = glmm.fit_bayes_glmm
    glmm.fit_bayes_glmm = raw
    try:
        rows.append(run("trial GLMM, primary, default BLAS threads", glmm.fit_trial_glmm.__wrapped__, main_trials, base))
    finally:
        glmm.fit_bayes_glmm = orig
    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(df.round(3).to_string(index=False))
    # CPU seconds of this process (all its threads): on a shared machine wall time grows with other jobs' load,
    # CPU time much less (the fits run one BLAS thread, so on a free machine the two agree).
    for col, unit in (("seconds", "s wall"), ("cpu_s", "s CPU")):
        t = df.set_index("fit")[col]
        print(f"{'' if col == 'cpu_s' else chr(10)}primary trial GLMM (laplace): {t.iloc[0]:.2f} {unit}; relative to it: "
              f"fit_vb {t.iloc[1] / t.iloc[0]:.2f}x, fit_vb from the MAP {t.iloc[2] / t.iloc[0]:.2f}x, fit_map "
              f"{t.iloc[3] / t.iloc[0]:.2f}x, per-row GLMM {t.iloc[4] / t.iloc[0]:.2f}x, default BLAS threads "
              f"{t.iloc[5] / t.iloc[0]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
