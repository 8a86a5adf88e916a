"""Cross-check of fvmatch's GLMMs against R's lme4::glmer (Laplace, ML), the field's reference.

Simulates studies on the default design (experiment/designs/default.toml; 72 main trials per participant, 10 units
per layer group) with both generators of analysis.simulate, fits glmm_trial and glmm_row with fvmatch's defaults
and with the former defaults (fixed-effect prior N(0, 2^2), N(0, 1) prior on log SDs), fits the same models with
glmer (bench/glmer_fit.R; the multiple-membership unit term is built with lme4's modular functions), and prints
the largest differences in the fixed effects, the SE ratios and the SDs. Needs R with lme4
(`apt-get install -y r-cran-lme4`); not part of `make test`.

    .venv/bin/python bench/lme4_crosscheck.py                       # 40 participants, seeds 1 and 2
    .venv/bin/python bench/lme4_crosscheck.py --participants 12 --models glmm_trial
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.accuracy import rows_long  # noqa: E402
from analysis.glmm import ModelOptions, fit_row_glmm, fit_trial_glmm  # noqa: E402
from analysis.report import _table_md  # noqa: E402
from analysis.simulate import SimulationSpec, simulate_trials  # noqa: E402

R_SCRIPT = Path(__file__).with_name("glmer_fit.R")
FITTERS = {"glmm_trial": fit_trial_glmm, "glmm_row": fit_row_glmm}
OPTIONS = {"default": ModelOptions(), "former (fe 2, log-SD prior 1)": ModelOptions(fe_prior_sd=2.0, vcp_prior_sd=1.0)}


def r_term(name: str) -> str:
    """glmer's coefficient name -> patsy's (typefeature_vis:layermiddle -> type[T.feature_vis]:layer[T.middle])."""
    if name == "(Intercept)":
        return "Intercept"
    return ":".join(re.sub(r"^(type|layer|n)(.+)$", r"\1[T.\2]", part) for part in name.split(":"))


def glmer_input(main: pd.DataFrame, model: str) -> pd.DataFrame:
    if model == "glmm_trial":
        return pd.DataFrame({"participant": main.participant, "trial_type": main.trial_type,
                             "layer_group": main.layer_group, "n_images": main.n_images,
                             "unit_a": main.unit_0, "unit_b": main.unit_1, "unit_c": main.unit_2,
                             "row_unit": main.unit_0, "y": main.trial_correct.astype(int)})
    rows = rows_long(main)
    return pd.DataFrame({"participant": rows.participant, "trial_type": rows.trial_type,
                         "layer_group": rows.layer_group, "n_images": rows.n_images, "unit_a": rows.unit_a,
                         "unit_b": rows.unit_b, "unit_c": rows.unit_c, "row_unit": rows.unit,
                         "y": rows.correct.astype(int)})


def run_glmer(data: pd.DataFrame, model: str, tmp: Path) -> pd.DataFrame:
    src, out = tmp / f"{model}.csv", tmp / f"{model}_glmer.csv"
    data.to_csv(src, index=False)
    subprocess.run(["Rscript", str(R_SCRIPT), str(src), "trial" if model == "glmm_trial" else "row", str(out)],
                   check=True, capture_output=True, text=True)
    return pd.read_csv(out)


def compare(spec: SimulationSpec, seed: int, models: list[str], tmp: Path) -> list[dict]:
    trials, _ = simulate_trials(spec, seed)
    main = trials[~trials.is_practice & ~trials.is_catch]
    rows = []
    for model in models:
        g = run_glmer(glmer_input(main, model), model, tmp)
        gfx = g[g.kind == "fixed"].assign(term=lambda d: d.term.map(r_term)).set_index("term")
        gsd = g[g.kind == "sd"].set_index("term").estimate
        for label, opts in OPTIONS.items():
            t0 = time.perf_counter()
            fit = FITTERS[model](main, opts)
            secs = time.perf_counter() - t0
            fx = fit.fixed.set_index("term")
            d = (fx.estimate - gfx.estimate.reindex(fx.index)).abs()
            se_col = "se_model" if "se_model" in fx else "se"  # glmer's SE is the model SE (no sandwich)
            ratio = fx[se_col] / gfx.se.reindex(fx.index)
            sd = fit.random.set_index("component").sd
            rows.append({"generator": spec.generator, "seed": seed, "model": model, "fvmatch options": label,
                         "max |diff| logit": d.max(), "term of max": d.idxmax(), "median |diff|": d.median(),
                         "SE ratio (median, range)": f"{ratio.median():.3f} ({ratio.min():.2f}-{ratio.max():.2f})",
                         "SD participant fvmatch / glmer": f"{sd['participant']:.3f} / {gsd['participant']:.3f}",
                         "SD unit fvmatch / glmer": f"{sd['unit']:.3f} / {gsd['unit']:.3f}",
                         "seconds fvmatch / glmer": f"{secs:.1f} / {g[g.kind == 'seconds'].estimate.iloc[0]:.1f}"})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--participants", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--models", nargs="+", choices=sorted(FITTERS), default=["glmm_trial", "glmm_row"])
    p.add_argument("--generators", nargs="+", choices=["trial", "rows"], default=["trial", "rows"])
    a = p.parse_args(argv)
    if not shutil.which("Rscript"):
        print("Rscript not found: apt-get install -y r-cran-lme4", file=sys.stderr)
        return 2
    version = subprocess.run(["Rscript", "-e", "cat(as.character(packageVersion('lme4')))"], capture_output=True,
                             text=True).stdout.strip()
    print(f"lme4 {version}; default design, {a.participants} participants, 10 units per layer group")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gen in a.generators:
            spec = SimulationSpec.from_design(n_participants=a.participants, generator=gen)
            for seed in a.seeds:
                for model in a.models:  # print as they come: glmer takes minutes per fit
                    new = compare(spec, seed, [model], Path(tmp))
                    print(pd.DataFrame(new).to_string(index=False), flush=True)
                    rows += new
    table = pd.DataFrame(rows)
    print("\n" + _table_md(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
