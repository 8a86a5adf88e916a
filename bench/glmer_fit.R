# Fit fvmatch's GLMMs with lme4::glmer (Laplace, ML) for bench/lme4_crosscheck.py.
# The unit effect of a trial is the mean of its three units' effects (multiple membership), which glmer's
# formula interface cannot express: the model is built with glFormula, the unit rows of Zt are replaced by the
# 1/3-weighted membership matrix, and the deviance is optimised with lme4's modular functions.
# usage: Rscript bench/glmer_fit.R trials.csv trial|row out.csv
suppressPackageStartupMessages({library(lme4); library(Matrix)})
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], stringsAsFactors = FALSE)
outcome <- args[2]
d$type <- factor(d$trial_type, levels = c("exemplar", "feature_vis"))
d$layer <- factor(d$layer_group, levels = c("early", "middle", "late"))
d$n <- factor(d$n_images, levels = sort(unique(d$n_images)))
units <- sort(unique(c(d$unit_a, d$unit_b, d$unit_c)))
d$unit <- factor(d$unit_a, levels = units)       # placeholder grouping, replaced below
d$row_unit <- factor(d$row_unit, levels = units)
mm <- sparseMatrix(i = c(match(d$unit_a, units), match(d$unit_b, units), match(d$unit_c, units)),
                   j = rep(seq_len(nrow(d)), 3), x = 1 / 3, dims = c(length(units), nrow(d)))
f <- if (outcome == "trial") y ~ type * layer * n + (1 | participant) + (1 | unit) else
       y ~ type * layer * n + (1 | participant) + (1 | unit) + (1 | row_unit)
t0 <- proc.time()[["elapsed"]]
gf <- glFormula(f, data = d, family = binomial)
k <- which(names(gf$reTrms$cnms) == "unit")
rows <- (gf$reTrms$Gp[k] + 1):gf$reTrms$Gp[k + 1]
Zt <- gf$reTrms$Zt
Zt[rows, ] <- mm
gf$reTrms$Zt <- drop0(Zt)
gf$reTrms$Ztlist[[k]] <- mm
devf <- do.call(mkGlmerDevfun, gf)
opt <- optimizeGlmer(devf)
devf <- updateGlmerDevfun(devf, gf$reTrms)
opt <- optimizeGlmer(devf, stage = 2)
fit <- mkMerMod(environment(devf), opt, gf$reTrms, fr = gf$fr)
secs <- proc.time()[["elapsed"]] - t0
fe <- fixef(fit)
se <- sqrt(diag(as.matrix(vcov(fit))))
vc <- as.data.frame(VarCorr(fit))
out <- rbind(data.frame(kind = "fixed", term = names(fe), estimate = unname(fe), se = unname(se)),
             data.frame(kind = "sd", term = vc$grp, estimate = vc$sdcor, se = NA),
             data.frame(kind = "seconds", term = "fit", estimate = secs, se = NA))
write.csv(out, args[3], row.names = FALSE)
