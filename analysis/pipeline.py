"""The whole analysis: sessions -> exclusions -> accuracy -> models -> tables, figures, report, results.json."""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from analysis.accuracy import CONDITION, condition_accuracy, marginal_participant_accuracy, participant_accuracy
from analysis.exclusion_rules import load_rules
from analysis.exclusions import apply_exclusions
from analysis.glmm import DEFAULT_MODELS, UNCALIBRATED, ModelFit, ModelOptions, fit_all, fixed_effects_table
from analysis.load import load_sessions
from analysis.report import Block, write_report
from analysis.stimuli_section import insert_before, stimulus_blocks
from contracts.common import software_versions
from contracts.results import TABLES, write_results_info

SOFTWARE = ["statsmodels", "scipy", "patsy", "seaborn", "matplotlib"]


@dataclass
class AnalysisOptions:
    min_catch_accuracy: float | None = None  # None: the exclusion rules' catch.min_accuracy
    exclusions: str | None = None  # exclusion-rules TOML; None: the shipped analysis/exclusions.toml
    incomplete: str = "include"  # include | exclude
    n_boot: int = 2000
    seed: int = 1
    n_as: str = "factor"
    fe_prior_sd: float = 10.0  # see analysis.glmm.ModelOptions
    vcp_prior_sd: float | None = None  # None: flat prior on the random-effect SDs (they can be 0)
    allow_mixed_sets: bool = False
    allow_mixed_designs: bool = False
    fit_models: bool = True
    models: tuple[str, ...] = DEFAULT_MODELS  # see analysis.glmm.DEFAULT_MODELS (glmm_row only on request)
    figures: bool = True


@dataclass
class AnalysisResult:
    folder: Path
    info: dict
    fits: list[ModelFit]
    warnings: list[str]


def _write_table(df: pd.DataFrame, path: Path, columns: list[str] | None = None) -> Path:
    if columns is not None:
        df = df.reindex(columns=columns + [c for c in df.columns if c not in columns])
    df.to_csv(path, index=False, float_format="%.6g")
    return path


def run_analysis(inputs: Iterable[os.PathLike | str], out: os.PathLike | str,
                 options: AnalysisOptions | None = None) -> AnalysisResult:
    opts = options or AnalysisOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rules = load_rules(opts.exclusions)  # before reading sessions: a bad rules file fails fast
    loaded = load_sessions(inputs, opts.allow_mixed_sets, opts.allow_mixed_designs)
    excl = apply_exclusions(loaded.trials, loaded.sessions, opts.min_catch_accuracy, opts.incomplete, rules,
                            infos=dict(zip(loaded.sessions.folder, loaded.infos)))
    excl.summary["session_problems"] = loaded.problems  # folders not analysed, rows left out (analysis.load)
    trials = excl.trials
    warns = list(loaded.warnings)
    written: list[Path] = []

    n_part = trials.participant.nunique()
    if 0 < n_part < 10:
        warns.append(f"only {n_part} participant(s): bootstrap CIs over participants are unreliable (too narrow) "
                     "with fewer than about 10" + ("; with 1 participant there are none" if n_part == 1 else ""))
    part = participant_accuracy(trials)
    cond = condition_accuracy(part, n_boot=opts.n_boot, seed=opts.seed)
    part_tl = marginal_participant_accuracy(part, ("trial_type", "layer_group"))
    cond_tl = condition_accuracy(part_tl, keys=("trial_type", "layer_group"), n_boot=opts.n_boot, seed=opts.seed)
    written.append(_write_table(cond, out / "accuracy_by_condition.csv", list(TABLES["accuracy_by_condition.csv"])))
    written.append(_write_table(part, out / "accuracy_by_participant.csv", list(TABLES["accuracy_by_participant.csv"])))
    written.append(_write_table(cond_tl, out / "accuracy_by_type_layer.csv"))
    written.append(_write_table(excl.catch, out / "catch_accuracy.csv"))
    written.append(_write_table(excl.sessions, out / "exclusions.csv"))  # every session: measures, verdict, reasons

    mopts = ModelOptions(n_as=opts.n_as, fe_prior_sd=opts.fe_prior_sd, vcp_prior_sd=opts.vcp_prior_sd, seed=opts.seed)
    fits: list[ModelFit] = []
    if opts.fit_models and len(trials):
        fits = fit_all(trials, mopts, tuple(opts.models))
    elif not len(trials):
        warns.append("no trials left to analyse after exclusions: no models fitted")
    for f in fits:
        warns += [f"{f.name}: {w}" for w in f.warnings]
    written.append(_write_table(fixed_effects_table(fits) if fits else pd.DataFrame(columns=list(TABLES["fixed_effects.csv"])),
                                out / "fixed_effects.csv", list(TABLES["fixed_effects.csv"])))
    models = pd.DataFrame([f.summary_row() for f in fits])
    tests = pd.concat([f.tests.assign(model=f.name) for f in fits if len(f.tests)], ignore_index=True) if any(len(f.tests) for f in fits) else pd.DataFrame()
    contrasts = pd.concat([f.contrasts.assign(model=f.name) for f in fits if len(f.contrasts)], ignore_index=True) if any(len(f.contrasts) for f in fits) else pd.DataFrame()
    random = pd.concat([f.random.assign(model=f.name) for f in fits if len(f.random)], ignore_index=True) if any(len(f.random) for f in fits) else pd.DataFrame()
    for name, df in (("models.csv", models), ("model_tests.csv", tests), ("model_contrasts.csv", contrasts),
                     ("random_effects.csv", random)):
        written.append(_write_table(df, out / name, ["model"] if "model" in df else None))

    # figures
    from analysis import plots  # matplotlib only when figures are made

    figs = out / "figures"
    fig_paths: dict[str, Path] = {}
    title = _figure_title(loaded)
    makers = (("accuracy_summary", lambda: plots.accuracy_summary_figure(part_tl, cond_tl, title)),
              ("accuracy", lambda: plots.accuracy_figure(part, cond, title)),
              ("model_means", lambda: plots.model_means_figure({f.name: f.contrasts for f in fits if f.scale == "logit"})),
              ("rt", lambda: plots.rt_figure(trials)))
    if opts.figures and trials.empty:
        warns.append("no trials left to analyse: no figures made")
    for stem, make in makers if opts.figures and not trials.empty else ():
        fig = make()
        if fig is not None:
            paths = plots.save(fig, figs, stem)
            written += paths
            fig_paths[stem] = paths[0].relative_to(out)

    provenance = {
        "sessions": [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in loaded.sessions.to_dict("records")],
        "stimulus_sets": loaded.stimulus_sets,
        "experiments": sorted(loaded.sessions.experiment.unique()),
        "session_software": _unique_dicts([i["software"] for i in loaded.infos]),
        "simulated_sessions": int(loaded.sessions.simulated.notna().sum()),
        "session_modes": {str(k): int(v) for k, v in loaded.sessions["mode"].value_counts().items()},
        "random_weight_sets": [s["set_id"] for s in loaded.stimulus_sets if s["random_weights"]],
    }
    blocks = build_report(loaded, excl, cond, cond_tl, fits, fig_paths, opts, warns, provenance)
    stim_blocks, stim_files = stimulus_blocks(loaded.infos, out)  # path-similarity check of the set(s)
    blocks, written = insert_before(blocks, "Exclusions", stim_blocks), written + stim_files
    written += write_report(blocks, out, "fvmatch analysis")
    outputs = sorted({p.relative_to(out).as_posix() for p in written})
    info = {
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "inputs": provenance,
        "exclusions": excl.summary,
        "options": {**asdict(opts), "bootstrap": f"percentile, participants resampled, B={opts.n_boot}, seed={opts.seed}",
                    "model_options": asdict(mopts)},
        "software": software_versions(SOFTWARE),
        "outputs": outputs,
        "models": [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in f.summary_row().items()} for f in fits],
        "warnings": warns,
    }
    write_results_info(out, info)
    return AnalysisResult(folder=out, info=info, fits=fits, warnings=warns)


def _unique_dicts(ds: list[dict]) -> list[dict]:
    seen, out = set(), []
    for d in ds:
        key = repr(sorted(d.items()))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _figure_title(loaded) -> str:
    flags = []
    if loaded.sessions.simulated.notna().any():
        flags.append("SIMULATED participants")
    if loaded.sessions.random_weights.any():
        flags.append("RANDOM-WEIGHT stimuli")
    return " · ".join(flags) + (" — not a study result" if flags else "")


def _not_evaluated(ex: dict) -> dict[tuple[str, str], list[str]]:
    """(rule, why) -> the sessions it could not be judged for, for the report's one line per reason."""
    out: dict[tuple[str, str], list[str]] = {}
    for n in ex["not_evaluated"]:
        out.setdefault((n["rule"], n["why"]), []).append(f"{n['participant']} ses {n['session']}")
    return out


def _round(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return df[[c for c in cols if c in df]].copy()


def build_report(loaded, excl, cond, cond_tl, fits, figs, opts, warns, prov) -> list[Block]:
    s = loaded.sessions
    B: list[Block] = [Block("h1", "fvmatch: matching accuracy for feature visualizations vs natural exemplars")]
    n_sim = int(s.simulated.notna().sum())
    if n_sim:
        pol = ", ".join(sorted(set(s.simulated.dropna())))
        B.append(Block("alert", f"SIMULATED PARTICIPANTS: {n_sim} of {len(s)} sessions were produced by a simulated "
                                f"observer ({pol}), not by people. Nothing here is evidence about human observers."))
    rw = [x["set_id"] for x in prov["stimulus_sets"] if x["random_weights"]]
    if rw:
        B.append(Block("alert", "STIMULI FROM AN UNTRAINED (RANDOM-WEIGHT) NETWORK: stimulus set(s) "
                                f"{', '.join(rw)}. Units of a random network have no learned features; the stimuli "
                                "are not meaningful for a study of interpretability."))
    mp = [f"{x['set_id']} ({x['manipulation']})" for x in prov["stimulus_sets"] if x.get("manipulation")]
    if mp:
        B.append(Block("alert", "STIMULI FROM A MANIPULATED NETWORK (a control condition): stimulus set(s) "
                                f"{', '.join(mp)}. Their feature visualizations were made to mislead while natural "
                                "exemplars are unchanged; see each set's manifest.json 'manipulation'."))
    ex = excl.summary
    B.append(Block("p", f"{len(s)} session(s) of {s.participant.nunique()} participant(s) from experiment(s) "
                        f"{', '.join(prov['experiments'])}; {ex['n_participants_analysed']} participant(s) and "
                        f"{ex['n_trials_analysed']} main trials analysed. Chance is 1/3 per matched row and 1/6 per "
                        "whole trial (one of 3! = 6 assignments); exactly two rows right is impossible."))
    if s["mode"].nunique() > 1:  # lab and online sessions together (session schema 1.3)
        by_mode = excl.trials.groupby(["mode", "trial_type"]).agg(
            accuracy=("trial_correct", "mean"), n_participants=("participant", "nunique"), n_trials=("trial_correct", "size"))
        B.append(Block("h2", "Lab and online sessions"))
        B.append(Block("table", _round(by_mode.reset_index(), ["mode", "trial_type", "accuracy", "n_participants", "n_trials"]),
                       "Whole-trial accuracy of the main trials analysed, by session mode (descriptive; the models pool modes)."))
    if warns:
        B.append(Block("h2", "Warnings"))
        B.append(Block("list", warns))

    # headline tests
    primary = next((f for f in fits if f.name == "glmm_trial"), None)
    B.append(Block("h2", "Tests of the layer effect and of the trial type x layer interaction"))
    if fits:
        rows = []
        for f in fits:
            if f.tests.empty:
                rows.append({"model": f.name, "test": "(model not estimable)", "chi2": np.nan, "df": 0,
                             "F": np.nan, "ddf": np.nan, "sd_share": np.nan, "sd_df": np.nan, "p_value": np.nan,
                             "status": f.status})
                continue
            for t in f.tests.itertuples():
                rows.append({"model": f.name, "test": t.test, "chi2": t.chi2, "df": t.df,
                             "F": getattr(t, "F", np.nan), "ddf": getattr(t, "ddf", np.nan),
                             "sd_share": getattr(t, "sd_share", np.nan), "sd_df": getattr(t, "sd_df", np.nan), "p_value": t.p_value,
                             "status": f.status})
        B.append(Block("table", pd.DataFrame(rows),
                       "Joint Wald tests of contrasts of model-based means with equal weights over the other factors "
                       "(emmeans-style). F = chi2/df with Satterthwaite denominator degrees of freedom (ddf); the "
                       "p-value accounts for the estimated random-effect SDs: the part of a contrast's variance that "
                       "grows with them (sd_share) is treated as estimated on sd_df degrees of freedom, the Bernoulli "
                       "part as known. The layer main effect is a between-unit contrast (about 80% unit variance, few "
                       "df, capped at units - layer groups): the chi-square, which treats the unit SD as known, was "
                       "anticonservative with about 10 units per layer group. glmm_trial (primary): whole-trial "
                       "correctness (glmm_row, per-row correctness, only with --models). Levels under the null, "
                       "checked on two generators: analysis/README.md."))
        for f in fits:
            if f.name in UNCALIBRATED:
                B.append(Block("p", f"Caution: {f.name} was fitted on request; {UNCALIBRATED[f.name]}."))
        shaky = [f"{f.name} ({f.status})" for f in fits if f.status != "ok"]
        if shaky:
            B.append(Block("p", "Caution: " + ", ".join(shaky) + " — see the warnings; tests of a model whose status "
                                "is not 'ok' are not evidence until the warning is understood (separation: estimates "
                                "set by the prior; not_estimable: no fit)."))
    else:
        B.append(Block("p", "No models were fitted."))
    B.append(Block("h2", "Accuracy by condition"))
    if "accuracy_summary" in figs:
        B.append(Block("figure", figs["accuracy_summary"].as_posix(),
                       "Accuracy by trial type and layer group, averaged over n, per matched row (chance 1/3) and per "
                       "whole trial (chance 1/6). Large markers: mean of participants with 95% percentile bootstrap CI "
                       "(participants resampled); small dots: individual participants."))
    if "accuracy" in figs:
        B.append(Block("figure", figs["accuracy"].as_posix(),
                       "Accuracy per matched row (top, chance 1/3) and per whole trial (bottom, chance 1/6). Large "
                       "markers: mean of participants with 95% percentile bootstrap CI (participants resampled); "
                       "small dots: individual participants."))
    B.append(Block("table", _round(cond_tl, ["trial_type", "layer_group", "level", "accuracy", "ci_low", "ci_high",
                                             "chance", "n_participants", "n_observations"]),
                   f"Averaged over n (each n weighs the same). 95% CI: percentile bootstrap over participants, "
                   f"B={opts.n_boot}, seed={opts.seed}."))
    B.append(Block("table", _round(cond, ["trial_type", "layer_group", "n_images", "level", "accuracy", "ci_low",
                                          "ci_high", "chance", "n_participants", "n_observations"]),
                   "Per condition (accuracy_by_condition.csv); per-participant values in accuracy_by_participant.csv."))
    if "rt" in figs:
        B.append(Block("figure", figs["rt"].as_posix(), "Time to confirm the assignment (dotted: medians)."))

    B.append(Block("h2", "Mixed-effects models"))
    B.append(Block("p", "Primary: binomial GLMM (logit) of whole-trial correctness with crossed random intercepts for "
                        "participant and unit (a trial's unit effect is the mean of its three units' effects). Trials "
                        "are independent given the random effects, so the permutation structure of a trial (rows are "
                        "dependent: 0, 1 or 3 right) does not bias its intervals. Secondary: per-row GLMM; its "
                        "model-based SEs would ignore the within-trial dependence, so they are replaced by a sandwich "
                        "clustered by trial (se; the unadjusted value is se_model). Both are estimated by the Laplace "
                        "approximation: random-effect SDs at the mode of their marginal posterior with fixed and random "
                        "effects integrated out (the GLMM analogue of REML, less biased with few units than ML or "
                        "statsmodels' fit_vb), effects at their conditional mode, SEs from the inverse Hessian of the log "
                        "posterior conditional on the SDs. Priors: N(0, 10^2) on fixed effects (negligible unless a cell "
                        "is all right or all wrong) and flat on the random-effect SDs, so an SD can be estimated at 0; SD "
                        "intervals are likelihood-ratio intervals that reach 0 when the data cannot tell the SD from 0. "
                        "Validation (analysis/README.md): estimates within 0.03 logit of lme4::glmer at 40 participants. "
                        "Under the null (200 simulated studies of 24 participants, 10 units per layer group), the "
                        "interaction test kept its level (0.04-0.06 at alpha = 0.05) on data from the model itself and "
                        "from an independent row-recognition process; the layer test, F on Satterthwaite df, rejected "
                        "in 0.015 and 0.03 (conservative; the chi-square gave 0.085 and 0.125): a layer p-value below "
                        "0.05 can be trusted, one a little above it may hide an effect that more units per layer group "
                        "would show."))
    B.append(Block("p", "Reading the fixed-effect tables: terms are treatment-coded against the reference levels "
                        "exemplar, early layer and the smallest n (with --n-as numeric: the mean n). So "
                        "type[T.feature_vis] is the feature-vis minus exemplar difference at the early layer and that n "
                        "only, not the overall effect of trial type, and layer[T.late] is late minus early for exemplar "
                        "trials. For overall effects read the tests above (averaged over the other factors) and "
                        "model_contrasts.csv: 'feature_vis - exemplar | <layer>' per layer group and the model-based means "
                        "per trial type and layer group."))
    if "model_means" in figs:
        B.append(Block("figure", figs["model_means"].as_posix(),
                       "Model-based probability correct for a typical participant and unit, averaged over n on the "
                       "logit scale, with 95% Wald intervals."))
    for f in fits:
        B.append(Block("h3", f"{f.name} — {f.status}"))
        B.append(Block("p", f"{f.method}. Formula: {f.formula or '—'}. Observations: {f.n_obs}; participants: "
                            f"{f.n_participants}; units: {f.n_units}; fit time {f.seconds:.2f} s. SE: {f.se_method}."))
        if f.warnings or f.notes:
            B.append(Block("list", [f"⚠ {w}" for w in f.warnings] + [f"note: {n}" for n in f.notes]))
        if len(f.fixed):
            B.append(Block("table", _round(f.fixed, ["term", "estimate", "se", "se_model", "ci_low", "ci_high", "z",
                                                     "p_value"]), f"Fixed effects ({f.scale} scale)."))
        if len(f.random):
            B.append(Block("table", _round(f.random, ["component", "sd", "sd_ci_low", "sd_ci_high", "n_levels"]),
                           "Random-effect standard deviations at the mode of their Laplace-approximate marginal posterior "
                           "(fixed and random effects integrated out); 95% intervals: "
                           + (f.random.sd_ci_method.iloc[0] if "sd_ci_method" in f.random else "—")
                           + ". An interval reaching 0: the data cannot tell that SD from 0." if "sd_ci_low" in f.random else
                           "Random-effect standard deviations (point estimates)."))
        if len(f.contrasts):
            B.append(Block("table", f.contrasts.drop(columns=[c for c in ("scale",) if c in f.contrasts]),
                           f"Contrasts and model-based means ({f.scale} scale; prob = back-transformed)."))

    B.append(Block("h2", "Exclusions"))
    r = ex["rules"]
    B.append(Block("p", f"Rules: {r['source']} (sha256 {str(r['sha256'])[:16]}...), the same for lab and online sessions, "
                        f"judged per session: catch-trial accuracy >= {r['catch_min_accuracy']:g} (whole trial); "
                        f"instructions >= {r['instructions_min_seconds']:g} s; time in the session "
                        f"{r['total_min_minutes']:g}-{r['total_max_minutes']:g} min (0: no bound); the same pairing on at "
                        f"most {r['variability_max_same_fraction']:.0%} of non-practice trials (from "
                        f"{r['variability_min_trials']} trials). A value of 0 (1 for the fraction) disables a rule."
                        + (f" Overridden on the command line: {', '.join(r['overrides'])}." if r["overrides"] else "")))
    B.append(Block("list", [
        f"practice trials dropped: {ex['practice_trials_dropped']}",
        f"catch trials (not analysed, used for attention): {ex['catch_trials']}; threshold: whole-trial catch "
        f"accuracy >= {ex['min_catch_accuracy']}",
        "participants excluded: " + ("; ".join(f"{e['participant']} ({e['reason']})" for e in ex["excluded_participants"])
                                     or "none"),
        "rules not evaluated (session kept for that rule): " + ("; ".join(
            f"{rule} for {', '.join(who)} ({why})" for (rule, why), who in _not_evaluated(ex).items()) or "none"),
        "participants without catch trials (kept, not checked): " + (", ".join(ex["participants_without_catch_trials"]) or "none"),
        f"incomplete sessions (policy: {ex['incomplete_policy']}): " + ("; ".join(
            f"{i['participant']} ses {i['session']} ({i['status']}, {i['n_trials_completed']}/{i['n_trials_planned']} "
            f"trials, {i['handling']})" for i in ex["incomplete_sessions"]) or "none"),
        "session folders not analysed or read in part: " + ("; ".join(
            f"{p['folder']} ({p['problem']}; {p['handling']})" for p in ex.get("session_problems", [])) or "none"),
    ]))
    if len(excl.sessions):
        B.append(Block("table", excl.sessions[["participant", "session", "mode", "excluded", "reasons", "catch_accuracy",
                                               "instructions_s", "session_minutes", "same_choice_fraction"]].astype(object).fillna("—"),
                       "Every session by the exclusion rules (exclusions.csv has the rules not evaluated and why)."))

    B.append(Block("h2", "Provenance"))
    B.append(Block("table", s[["participant", "session", "mode", "status", "n_rows", "n_trials_planned", "set_id",
                               "simulated", "design_hash", "folder"]].fillna("—"), "Sessions read."))
    B.append(Block("table", pd.DataFrame(prov["stimulus_sets"]), "Stimulus sets (manifest sha256)."))
    B.append(Block("pre", "\n".join(f"{k}: {v}" for k, v in asdict(opts).items()), "Options"))
    B.append(Block("pre", "\n".join(f"{k}: {v}" for k, v in software_versions(SOFTWARE).items()), "Software"))
    return B
