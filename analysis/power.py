"""Simulation studies on ``analysis.simulate``: rejection rates of the models' tests (their level under a null,
their power under an effect) and interval coverage, over many seeded replicates.

The same machinery answers two questions:

* **validation** (slow tests, analysis/README.md): with no layer effect and no interaction, does each reported
  test reject at about alpha, under both generators; do the intervals cover the truth;
* **planning** (``python -m analysis.power``): for a given trial type x layer effect and design, how often do the
  primary model's tests detect it, over a grid of participants x units per layer group (a table and a figure).

Every replicate's seed is ``seed + index`` and is kept in the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from analysis.accuracy import main_trials
from analysis.glmm import ModelOptions, fit_mixedlm_cells, fit_row_glmm, fit_trial_glmm
from analysis.simulate import DEFAULT_DESIGN, GENERATORS, SimulationSpec, simulate_trials

FITTERS: dict[str, Callable] = {"glmm_trial": fit_trial_glmm, "glmm_row": fit_row_glmm,
                                "mixedlm_cells": fit_mixedlm_cells}
PRIMARY_TESTS = ("layer group (main effect)", "trial type x layer group (interaction)")


@dataclasses.dataclass
class StudyResult:
    tests: pd.DataFrame  # seed, model, test, chi2, df, F, ddf, p_value, status
    fixed: pd.DataFrame  # seed, model, term, estimate, se, ci_low, ci_high
    random: pd.DataFrame  # seed, model, component, sd, sd_ci_low, sd_ci_high
    seconds: float


def run_study(spec: SimulationSpec, seeds: Iterable[int], models: Iterable[str] = ("glmm_trial",),
              opts: ModelOptions | None = None, progress: bool = False) -> StudyResult:
    """Simulate one data set per seed and fit each model to it; long tables of tests, effects and SDs."""
    opts = opts or ModelOptions()
    models = list(models)
    unknown = [m for m in models if m not in FITTERS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {sorted(FITTERS)}")
    seeds = list(seeds)
    tests, fixed, random = [], [], []
    t0 = time.perf_counter()
    it = seeds
    if progress:
        from tqdm import tqdm

        it = tqdm(seeds, desc="replicates", file=sys.stderr)
    for seed in it:
        trials, _ = simulate_trials(spec, seed=seed)
        main = main_trials(trials)
        for name in models:
            fit = FITTERS[name](main, opts)
            tag = {"seed": seed, "model": name, "status": fit.status}
            if len(fit.tests):
                tests.append(fit.tests.reindex(columns=["test", "chi2", "df", "F", "ddf", "sd_share", "sd_df", "p_value"]).assign(**tag))
            if len(fit.fixed):
                fixed.append(fit.fixed[["term", "estimate", "se", "ci_low", "ci_high"]].assign(**tag))
            if len(fit.random):
                random.append(fit.random.reindex(columns=["component", "sd", "sd_ci_low", "sd_ci_high"]).assign(**tag))
    cat = lambda xs: pd.concat(xs, ignore_index=True) if xs else pd.DataFrame()  # noqa: E731
    return StudyResult(cat(tests), cat(fixed), cat(random), time.perf_counter() - t0)


def rejection_rates(tests: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Share of replicates whose test rejected at ``alpha`` (an untestable or failed fit counts as not rejecting),
    with its binomial standard error."""
    g = tests.assign(reject=tests.p_value < alpha).groupby(["model", "test"], sort=False)
    out = g.agg(rejection=("reject", "mean"), replicates=("seed", "nunique")).reset_index()
    out["mc_se"] = np.sqrt(out.rejection * (1 - out.rejection) / out.replicates)
    return out


def coverage(fixed: pd.DataFrame, truth: dict[str, float]) -> pd.DataFrame:
    """Per model and term with a known true value: coverage of the 95% intervals, mean estimate, SE / SD."""
    d = fixed[fixed.term.isin(list(truth))].assign(truth=lambda x: x.term.map(truth))
    d = d.assign(covered=(d.ci_low <= d.truth) & (d.truth <= d.ci_high))
    g = d.groupby(["model", "term"], sort=False)
    out = g.agg(truth=("truth", "first"), mean_estimate=("estimate", "mean"), coverage=("covered", "mean"),
                mean_se=("se", "mean"), sd_estimate=("estimate", "std"), replicates=("seed", "nunique")).reset_index()
    out["se_over_sd"] = out.mean_se / out.sd_estimate
    return out


def sd_coverage(random: pd.DataFrame, truth: dict[str, float]) -> pd.DataFrame:
    """Per model and random-effect component: mean SD, coverage of its 95% interval, share of intervals reaching 0."""
    d = random[random.component.isin(list(truth))].assign(truth=lambda x: x.component.map(truth))
    d = d.assign(covered=(d.sd_ci_low <= d.truth + 1e-12) & (d.truth <= d.sd_ci_high), at_zero=d.sd_ci_low <= 0)
    return (d.groupby(["model", "component"], sort=False)
            .agg(truth=("truth", "first"), mean_sd=("sd", "mean"), coverage=("covered", "mean"),
                 interval_reaches_0=("at_zero", "mean"), replicates=("seed", "nunique")).reset_index())


# ---------------------------------------------------------------------------------------------------------
# power over participants x units

def power_grid(base: SimulationSpec, participants: Iterable[int], units: Iterable[int], replicates: int,
               seed: int = 0, alpha: float = 0.05, models: Iterable[str] = ("glmm_trial",),
               opts: ModelOptions | None = None, progress: bool = False) -> pd.DataFrame:
    """Rejection rate of each test at ``alpha`` for every participants x units-per-group pair of the grid.
    Replicate i of every grid point uses seed ``seed + i`` (common random numbers across the grid)."""
    opts = opts or ModelOptions(sd_intervals=False)  # tests only: the SD intervals are not needed
    rows = []
    for n_p in participants:
        for n_u in units:
            spec = dataclasses.replace(base, n_participants=int(n_p), units_per_group=int(n_u))
            res = run_study(spec, range(seed, seed + replicates), models, opts, progress=progress)
            rates = rejection_rates(res.tests, alpha)
            rows.append(rates.assign(n_participants=int(n_p), units_per_group=int(n_u), alpha=alpha,
                                     seconds=round(res.seconds, 1)))
    return pd.concat(rows, ignore_index=True)


def power_figure(power: pd.DataFrame, title: str = ""):
    """Power of the primary model's layer and interaction tests against participants, one line per units per
    layer group, with Monte Carlo 95% bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = power[power.test.isin(PRIMARY_TESTS)]
    models = list(dict.fromkeys(d.model))
    fig, axes = plt.subplots(len(models), len(PRIMARY_TESTS), figsize=(5.2 * len(PRIMARY_TESTS), 3.6 * len(models)),
                             squeeze=False, sharey=True)
    for r, model in enumerate(models):
        for c, test in enumerate(PRIMARY_TESTS):
            ax = axes[r, c]
            sub = d[(d.model == model) & (d.test == test)]
            groups = list(sub.groupby("units_per_group"))
            span = max(np.ptp(sub.n_participants), 1)
            for i, (n_u, g) in enumerate(groups):
                g = g.sort_values("n_participants")
                dodge = (i - (len(groups) - 1) / 2) * 0.015 * span  # lines of equal rates stay visible
                lo = np.clip(g.rejection - 1.96 * g.mc_se, 0, 1)
                hi = np.clip(g.rejection + 1.96 * g.mc_se, 0, 1)
                ax.errorbar(g.n_participants + dodge, g.rejection, yerr=[g.rejection - lo, hi - g.rejection],
                            marker="o", capsize=3, label=f"{n_u} units per layer group")
            alpha = float(d.alpha.iloc[0])
            ax.axhline(0.8, color="0.4", ls="--", lw=1)
            ax.axhline(alpha, color="0.6", ls=":", lw=1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("participants")
            ax.set_title(f"{model}: {test}", fontsize=10)
            if c == 0:
                ax.set_ylabel(f"rejection rate at alpha = {alpha:g}")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels) + 1, fontsize=8, frameon=False,
               title="bars: 95% Monte Carlo intervals; dashed: power 0.8; dotted: alpha", title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.power",
        description="Power of the layer and trial type x layer tests over participants x units per layer group, by "
                    "simulating the design (analysis.simulate) and fitting the primary GLMM to every replicate.")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for power.csv, power.json, power.png/svg")
    p.add_argument("--design", default=DEFAULT_DESIGN, help="design name or TOML path (default: default)")
    p.add_argument("--participants", type=int, nargs="+", default=[12, 24, 40], help="participant counts")
    p.add_argument("--units", type=int, nargs="+", default=[10, 20], help="units per layer group")
    p.add_argument("--replicates", type=int, default=100, help="simulated studies per grid point (default 100)")
    p.add_argument("--seed", type=int, default=1, help="seed of the first replicate (default 1)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--generator", choices=GENERATORS, default="trial", help="simulator (default: trial)")
    p.add_argument("--models", nargs="+", choices=sorted(FITTERS), default=["glmm_trial"])
    for name, default, what in (("b-feature-vis", -0.6, "feature_vis - exemplar at the early layer"),
                                ("b-middle", -0.3, "middle - early (exemplar)"), ("b-late", -0.6, "late - early (exemplar)"),
                                ("b-fv-middle", -0.2, "interaction: extra fv effect at middle"),
                                ("b-fv-late", -0.5, "interaction: extra fv effect at late"),
                                ("sd-participant", 0.5, "participant SD"), ("sd-unit", 0.6, "unit SD"),
                                ("intercept", 0.5, "exemplar, early, middle n")):
        p.add_argument(f"--{name}", type=float, default=default, help=f"{what}, logit (default {default})")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    base = SimulationSpec.from_design(a.design, units_per_group=max(a.units), generator=a.generator,
                                      b_feature_vis=a.b_feature_vis, b_middle=a.b_middle, b_late=a.b_late,
                                      b_fv_middle=a.b_fv_middle, b_fv_late=a.b_fv_late, intercept=a.intercept,
                                      sd_participant=a.sd_participant, sd_unit=a.sd_unit)
    for n_u in a.units:  # every grid point must be a design the lab could run
        SimulationSpec.from_design(a.design, units_per_group=n_u)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    power = power_grid(base, a.participants, a.units, a.replicates, a.seed, a.alpha, a.models, progress=True)
    power.to_csv(out / "power.csv", index=False, float_format="%.4g")
    info = {"simulated": "analysis.simulate:" + a.generator, "design": base.design,
            "spec": {k: v for k, v in dataclasses.asdict(base).items() if k not in ("n_participants", "units_per_group")},
            "grid": {"participants": a.participants, "units_per_group": a.units}, "replicates": a.replicates,
            "seeds": f"{a.seed}..{a.seed + a.replicates - 1} at every grid point", "alpha": a.alpha,
            "models": a.models, "model_options": dataclasses.asdict(ModelOptions(sd_intervals=False))}
    (out / "power.json").write_text(json.dumps(info, indent=2, default=list) + "\n")
    from analysis.plots import save

    title = (f"SIMULATED power ({a.generator} generator, design {Path(base.design).stem}, {a.replicates} replicates; "
             f"type x layer: middle {a.b_fv_middle:+g}, late {a.b_fv_late:+g} logit)")
    paths = save(power_figure(power, title), out, "power")
    show = power[power.test.isin(PRIMARY_TESTS)][["model", "test", "n_participants", "units_per_group", "rejection", "mc_se"]]
    print(show.to_string(index=False))
    print("wrote " + ", ".join(str(p) for p in [out / "power.csv", out / "power.json", *paths]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
