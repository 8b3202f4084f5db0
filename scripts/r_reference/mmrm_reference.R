#!/usr/bin/env Rscript
# Reference values for the MMRM (analysis/mmrm.py), computed with R and Debian's R packages
# (r-base-core, r-cran-nlme, r-cran-lme4, r-cran-emmeans, r-cran-pbkrtest, r-cran-lmertest,
# r-cran-numderiv, r-cran-jsonlite). The data sets are written by scripts/r_reference/mmrm_data.py into
# tests/analysis/fixtures/mmrm/*.csv; run from the repository root:
#   python scripts/r_reference/mmrm_data.py && Rscript scripts/r_reference/mmrm_reference.R
# which rewrites tests/analysis/fixtures/r_mmrm.json. The tests do not need R.
#
# What R gives for each quantity:
# - REML fits for every covariance structure: nlme::gls (unstructured = corSymm + varIdent,
#   Toeplitz = corARMA(p = visits - 1) (a stationary correlation of any shape), AR(1) = corAR1,
#   compound symmetry = corCompSymm; the heterogeneous forms add varIdent by visit);
# - Satterthwaite df, per-visit treatment differences and LS means: emmeans on the gls fit
#   (mode = "satterthwaite": numerical derivatives of vcov(beta) over nlme's variance parameters
#   with nlme's apVar, i.e. the observed information);
# - Kenward-Roger (and Satterthwaite again, lmerTest) where lme4 fits the same model: compound
#   symmetry with a non-negative correlation = a random intercept per participant (lmer, REML);
#   emmeans with pbkrtest for KR, lmerTest for the interaction F tests.
suppressPackageStartupMessages({
  library(nlme)
  library(lme4)
  library(emmeans)
  library(pbkrtest)
  library(lmerTest)
  library(jsonlite)
  library(numDeriv)
})
emm_options(msg.interaction = FALSE, msg.nesting = FALSE)

out <- list(
  generated_by = "scripts/r_reference/mmrm_reference.R",
  r_version = R.version.string,
  packages = lapply(
    setNames(nm = c("nlme", "lme4", "emmeans", "pbkrtest", "lmerTest", "numDeriv", "jsonlite")),
    function(p) as.character(packageVersion(p))
  )
)

read_case <- function(file, response) {
  d <- read.csv(file.path("tests/analysis/fixtures/mmrm", file), stringsAsFactors = FALSE)
  d$y <- d[[response]]
  d$fday <- factor(d$day)
  d$vi <- as.integer(d$fday)
  d$trt <- factor(d$treated, levels = c(0, 1))
  d$id <- factor(d$participant_id)
  d[order(d$id, d$vi), ]
}

structures <- function(n_visits) {
  list(
    unstructured = list(cor = corSymm(form = ~ vi | id), het = TRUE),
    toeplitz_heterogeneous = list(cor = corARMA(p = n_visits - 1, q = 0, form = ~ vi | id), het = TRUE),
    toeplitz = list(cor = corARMA(p = n_visits - 1, q = 0, form = ~ vi | id), het = FALSE),
    ar1_heterogeneous = list(cor = corAR1(form = ~ vi | id), het = TRUE),
    ar1 = list(cor = corAR1(form = ~ vi | id), het = FALSE),
    cs_heterogeneous = list(cor = corCompSymm(form = ~ 1 | id), het = TRUE),
    cs = list(cor = corCompSymm(form = ~ 1 | id), het = FALSE)
  )
}

# ---------------------------------------------------------------------------------------------
# Satterthwaite and Kenward-Roger from the REML likelihood written out here, at nlme's estimate.
# The covariance is written in natural parameters (variances, covariances, correlations: a
# different parameterization from the Python module's, on purpose; the df are invariant to it),
# derivatives are numerical (numDeriv, Richardson extrapolation):
#   Satterthwaite (Satterthwaite 1946; as in lmerTest and the mmrm package): df = 2 v^2 / (g' W g),
#     v = l' Phi l, g = d v / d theta, W = inverse observed information (the REML Hessian written
#     out; numDeriv's numerical Hessian of this 36-parameter likelihood moved with its step size);
#   Kenward-Roger (Kenward & Roger 1997, linear form: second derivatives of Sigma omitted, as in
#     pbkrtest and SAS for linear covariance parameters): W = inverse expected information
#     (1/2 tr(P Sigma_h P Sigma_j)), Phi_A = Phi + 2 Phi {sum W_hj (Q_hj - P_h Phi P_j)} Phi,
#     scalar contrast df = 2 / (a' W a), a_h = l' Phi P_h Phi l / l' Phi l.

sigma_builder <- function(structure, n) {
  lag <- abs(outer(1:n, 1:n, "-"))
  low <- which(lower.tri(diag(n), diag = TRUE))
  switch(structure,
    unstructured = function(th) { S <- matrix(0, n, n); S[low] <- th; S + t(S) - diag(diag(S)) },
    cs = function(th) th[2] + diag(th[1] - th[2], n),
    cs_heterogeneous = function(th) { R <- matrix(th[n + 1], n, n); diag(R) <- 1; outer(th[1:n], th[1:n]) * R },
    ar1 = function(th) th[1] * th[2]^lag,
    ar1_heterogeneous = function(th) outer(th[1:n], th[1:n]) * th[n + 1]^lag,
    toeplitz = function(th) th[1] * matrix(c(1, th[2:n])[lag + 1], n, n),
    toeplitz_heterogeneous = function(th) outer(th[1:n], th[1:n]) * matrix(c(1, th[(n + 1):(2 * n - 1)])[lag + 1], n, n)
  )
}

theta_from_sigma <- function(structure, S) {
  n <- nrow(S)
  sd <- sqrt(diag(S)); R <- S / outer(sd, sd)
  switch(structure,
    unstructured = S[lower.tri(S, diag = TRUE)],
    cs = c(S[1, 1], S[2, 1]),
    cs_heterogeneous = c(sd, R[2, 1]),
    ar1 = c(S[1, 1], R[2, 1]),
    ar1_heterogeneous = c(sd, R[2, 1]),
    toeplitz = c(S[1, 1], R[2:n, 1]),
    toeplitz_heterogeneous = c(sd, R[2:n, 1])
  )
}

reml_parts <- function(d, X, build) {
  # participants grouped by visit pattern; per pattern and pair of visit positions (a, b) the
  # cross-products sum_i x_ia x_ib', sum_i x_ia y_ib, sum_i y_ia y_ib, so that
  # sum_i X_i' A X_i = sum_ab A[a, b] XX[[a, b]] for any matrix A over the pattern's visits
  subj <- split(seq_len(nrow(d)), d$id)
  key <- vapply(subj, function(r) paste(d$vi[r], collapse = ","), "")
  pats <- lapply(split(subj, key), function(group) {
    v <- d$vi[group[[1]]]
    m <- length(v)
    rows <- sapply(group, identity)  # m x n_g row numbers
    rows <- matrix(rows, nrow = m)
    XX <- list(); Xy <- list(); yy <- matrix(0, m, m)
    for (a in seq_len(m)) for (b in seq_len(m)) {
      XX[[(a - 1) * m + b]] <- crossprod(X[rows[a, ], , drop = FALSE], X[rows[b, ], , drop = FALSE])
      Xy[[(a - 1) * m + b]] <- crossprod(X[rows[a, ], , drop = FALSE], d$y[rows[b, ]])
      yy[a, b] <- sum(d$y[rows[a, ]] * d$y[rows[b, ]])
    }
    list(v = v, m = m, n = ncol(rows), XX = XX, Xy = Xy, yy = yy)
  })
  list(pats = pats, p = ncol(X), build = build)
}

xax <- function(A, pat) {
  out <- 0
  for (a in seq_len(pat$m)) for (b in seq_len(pat$m)) out <- out + A[a, b] * pat$XX[[(a - 1) * pat$m + b]]
  out
}

xay <- function(A, pat) {
  out <- 0
  for (a in seq_len(pat$m)) for (b in seq_len(pat$m)) out <- out + A[a, b] * pat$Xy[[(a - 1) * pat$m + b]]
  out
}

phi_of <- function(parts, th) {
  S <- parts$build(th)
  XtVX <- 0
  for (pat in parts$pats) XtVX <- XtVX + xax(solve(S[pat$v, pat$v, drop = FALSE]), pat)
  solve(XtVX)
}

neg2_reml <- function(parts, th) {
  S <- parts$build(th)
  XtVX <- 0; XtVy <- 0; ld <- 0
  for (pat in parts$pats) {
    Si <- S[pat$v, pat$v, drop = FALSE]; Vi <- solve(Si)
    XtVX <- XtVX + xax(Vi, pat); XtVy <- XtVy + xay(Vi, pat)
    ld <- ld + pat$n * as.numeric(determinant(Si)$modulus)
  }
  beta <- solve(XtVX, XtVy)
  # r'V^-1 r = y'V^-1 y - 2 beta'X'V^-1 y + beta'X'V^-1 X beta
  q <- 0
  for (pat in parts$pats) q <- q + sum(solve(S[pat$v, pat$v, drop = FALSE]) * pat$yy)
  q <- q - 2 * sum(beta * XtVy) + as.numeric(t(beta) %*% XtVX %*% beta)
  ld + as.numeric(determinant(XtVX)$modulus) + q
}

kr_parts <- function(parts, th) {
  S <- parts$build(th)
  n <- nrow(S); k <- length(th)
  J <- numDeriv::jacobian(function(t) as.vector(parts$build(t)), th)
  dS <- lapply(seq_len(k), function(h) matrix(J[, h], n, n))
  p <- parts$p
  Phi <- phi_of(parts, th)
  P <- lapply(seq_len(k), function(h) matrix(0, p, p))
  Q <- lapply(seq_len(k * k), function(h) matrix(0, p, p))
  trVV <- matrix(0, k, k)
  for (pat in parts$pats) {
    v <- pat$v; Vi <- solve(S[v, v, drop = FALSE])
    A <- lapply(dS, function(D) Vi %*% D[v, v, drop = FALSE] %*% Vi)  # -d V^-1 / d theta_h
    for (h in seq_len(k)) {
      P[[h]] <- P[[h]] - xax(A[[h]], pat)
      for (j in seq_len(k)) {
        Q[[(h - 1) * k + j]] <- Q[[(h - 1) * k + j]] + xax(A[[h]] %*% S[v, v, drop = FALSE] %*% A[[j]], pat)
        trVV[h, j] <- trVV[h, j] + pat$n * sum(diag(A[[h]] %*% dS[[j]][v, v, drop = FALSE]))
      }
    }
  }
  # tr(P_reml S_h P_reml S_j) = tr(V^-1 S_h V^-1 S_j) - 2 tr(Phi Q_hj) + tr(Phi P_h Phi P_j)
  IE <- matrix(0, k, k)
  for (h in seq_len(k)) for (j in seq_len(k)) {
    IE[h, j] <- 0.5 * (trVV[h, j] - 2 * sum(diag(Phi %*% Q[[(h - 1) * k + j]])) +
                         sum(diag(Phi %*% P[[h]] %*% Phi %*% P[[j]])))
  }
  W <- solve(IE)
  # observed information of l_R (half the Hessian of -2 l_R), written out:
  # -tr(P S_h P S_j) + tr(P S_hj) + 2 y'P S_j P S_h P y - y'P S_hj P y, with second derivatives of
  # Sigma from numDeriv (zero for the linear structures) and r = y - X beta
  J2 <- numDeriv::jacobian(function(t) as.vector(numDeriv::jacobian(function(u) as.vector(parts$build(u)), t)), th)
  d2S <- function(h, j) matrix(J2[(j - 1) * n * n + seq_len(n * n), h], n, n)
  XtVy <- 0
  for (pat in parts$pats) XtVy <- XtVy + xay(solve(S[pat$v, pat$v, drop = FALSE]), pat)
  beta <- Phi %*% XtVy
  OBS <- -2 * IE
  bvec <- matrix(0, k, p)
  for (pat in parts$pats) {
    v <- pat$v; m <- pat$m; Vi <- solve(S[v, v, drop = FALSE])
    RR <- matrix(0, m, m); XR <- list()
    for (a in seq_len(m)) for (b in seq_len(m)) {
      ab <- (a - 1) * m + b; ba <- (b - 1) * m + a
      RR[a, b] <- pat$yy[a, b] - sum(beta * pat$Xy[[ab]]) - sum(beta * pat$Xy[[ba]]) +
        as.numeric(t(beta) %*% pat$XX[[ab]] %*% beta)
      XR[[ab]] <- pat$Xy[[ab]] - pat$XX[[ab]] %*% beta  # sum_i x_ia r_ib
    }
    A <- lapply(dS, function(D) Vi %*% D[v, v, drop = FALSE] %*% Vi)
    for (h in seq_len(k)) {
      for (a in seq_len(m)) for (b in seq_len(m)) bvec[h, ] <- bvec[h, ] + A[[h]][a, b] * XR[[(a - 1) * m + b]]
      for (j in seq_len(k)) {
        E <- Vi %*% d2S(h, j)[v, v, drop = FALSE] %*% Vi
        # tr(V^-1 S_hj) - tr(Phi X'V^-1 S_hj V^-1 X)
        tr_pshj <- pat$n * sum(diag(Vi %*% d2S(h, j)[v, v, drop = FALSE])) - sum(diag(Phi %*% xax(E, pat)))
        OBS[h, j] <- OBS[h, j] + tr_pshj + 2 * sum((A[[j]] %*% S[v, v, drop = FALSE] %*% A[[h]]) * RR) - sum(E * RR)
      }
    }
  }
  OBS <- OBS - 2 * bvec %*% Phi %*% t(bvec)
  W_obs <- solve(OBS / 2)
  adj <- matrix(0, p, p)
  for (h in seq_len(k)) for (j in seq_len(k)) adj <- adj + W[h, j] * (Q[[(h - 1) * k + j]] - P[[h]] %*% Phi %*% P[[j]])
  list(Phi = Phi, PhiA = Phi + 2 * Phi %*% adj %*% Phi, P = P, W = W, W_obs = W_obs)
}

df_table <- function(parts, th, beta, contrasts) {
  kr <- kr_parts(parts, th)
  W_obs <- kr$W_obs
  rows <- lapply(names(contrasts), function(nm) {
    l <- contrasts[[nm]]
    v <- as.numeric(t(l) %*% kr$Phi %*% l)
    # d(l'Phi l)/d theta_h = -l'Phi P_h Phi l (P_h = X' dV^-1/dtheta_h X)
    g <- sapply(kr$P, function(Ph) -as.numeric(t(l) %*% kr$Phi %*% Ph %*% kr$Phi %*% l))
    df_s <- 2 * v^2 / as.numeric(t(g) %*% W_obs %*% g)
    a <- sapply(kr$P, function(Ph) as.numeric(t(l) %*% kr$Phi %*% Ph %*% kr$Phi %*% l) / v)
    df_kr <- 2 / as.numeric(t(a) %*% kr$W %*% a)
    est <- sum(l * beta)
    se_kr <- sqrt(as.numeric(t(l) %*% kr$PhiA %*% l))
    data.frame(visit = nm, estimate = est, se = sqrt(v), df_satterthwaite = df_s,
               p_satterthwaite = 2 * pt(-abs(est / sqrt(v)), df_s),
               se_kenward_roger = se_kr, df_kenward_roger = df_kr,
               p_kenward_roger = 2 * pt(-abs(est / se_kr), df_kr))
  })
  do.call(rbind, rows)
}

lsmeans_table <- function(emm) {
  s <- summary(emm)
  data.frame(visit = as.character(s$fday), treated = as.integer(as.character(s$trt)),
             lsmean = s$emmean, se = s$SE)
}

fit_gls <- function(d, formula, st) {
  ctl <- glsControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-12,
                    returnObject = FALSE, opt = "nlminb")
  if (st$het) {
    eval(substitute(gls(F, data = d, correlation = C, weights = varIdent(form = ~ 1 | fday),
                        method = "REML", control = ctl), list(F = formula, C = st$cor)))
  } else {
    eval(substitute(gls(F, data = d, correlation = C, method = "REML", control = ctl),
                    list(F = formula, C = st$cor)))
  }
}

full_sigma <- function(fit, d) {
  # the covariance over all visits, from a participant seen at every visit
  id <- names(which(table(d$id) == nlevels(d$fday)))[1]
  rows <- which(d$id == id)
  R <- corMatrix(fit$modelStruct$corStruct)[[id]]
  w <- if (is.null(fit$modelStruct$varStruct)) rep(1, length(rows)) else
    varWeights(fit$modelStruct$varStruct)[rows]
  sd <- fit$sigma / w
  R * outer(sd, sd)
}

gls_case <- function(d, formula, structure, st) {
  fit <- fit_gls(d, formula, st)
  S <- full_sigma(fit, d)
  emm <- emmeans(fit, ~ trt | fday, mode = "df.error", data = d)
  L <- emm@linfct
  grid <- emm@grid
  contrasts <- list()
  for (v in levels(d$fday)) {
    contrasts[[v]] <- L[grid$fday == v & grid$trt == "1", ] - L[grid$fday == v & grid$trt == "0", ]
  }
  X <- model.matrix(formula, d)
  parts <- reml_parts(d, X, sigma_builder(structure, nlevels(d$fday)))

  th <- theta_from_sigma(structure, S)
  list(
    reml_loglik_nlme = as.numeric(logLik(fit)),
    # the REML log-likelihood written out here, at nlme's estimate (equals nlme's unless the fit is
    # on a boundary)
    reml_loglik_here = -0.5 * (neg2_reml(parts, th) + (nrow(d) - ncol(X)) * log(2 * pi)),
    n_theta = length(th),
    sigma = S,
    beta = as.list(coef(fit)),
    se_beta = as.list(sqrt(diag(vcov(fit)))),
    per_visit = df_table(parts, th, coef(fit), contrasts),
    lsmeans = lsmeans_table(emm)
  )
}

visit_table <- function(emm_contrast) {
  s <- summary(emm_contrast, infer = c(TRUE, TRUE))
  data.frame(visit = as.character(s$fday), estimate = s$estimate, se = s$SE, df = s$df,
             p_value = s$p.value, ci_low = s$lower.CL, ci_high = s$upper.CL)
}

lmer_case <- function(d, formula, interaction_term) {
  f <- update(formula, . ~ . + (1 | id))
  fit <- eval(substitute(lmerTest::lmer(F, data = d, REML = TRUE), list(F = f)))
  emm_kr <- emmeans(fit, ~ trt | fday, lmer.df = "kenward-roger", data = d)
  emm_sw <- emmeans(fit, ~ trt | fday, lmer.df = "satterthwaite", data = d)
  a_sw <- anova(fit, ddf = "Satterthwaite")
  a_kr <- anova(fit, ddf = "Kenward-Roger")
  ftab <- function(a) list(F = a[interaction_term, "F value"], num_df = a[interaction_term, "NumDF"],
                           den_df = a[interaction_term, "DenDF"], p_value = a[interaction_term, "Pr(>F)"])
  vc <- as.data.frame(VarCorr(fit))
  list(
    singular = isSingular(fit),
    random_intercept_var = vc$vcov[1], residual_var = vc$vcov[2],
    kenward_roger = visit_table(contrast(emm_kr, list(treated_minus_control = c(-1, 1)))),
    satterthwaite = visit_table(contrast(emm_sw, list(treated_minus_control = c(-1, 1)))),
    interaction = list(term = interaction_term, satterthwaite = ftab(a_sw), kenward_roger = ftab(a_kr))
  )
}

cases <- list(
  sofa = list(file = "sofa.csv", response = "value", formula = y ~ fday * trt + baseline),
  sle = list(file = "sle.csv", response = "change", formula = y ~ fday * trt + baseline),
  sle_small = list(file = "sle_small.csv", response = "change", formula = y ~ fday * trt + baseline)
)

out$cases <- list()
for (name in names(cases)) {
  cs <- cases[[name]]
  d <- read_case(cs$file, cs$response)
  sts <- structures(nlevels(d$fday))
  if (name == "sle_small") sts <- sts[c("unstructured", "cs")]
  res <- list(file = cs$file, response = cs$response, formula = deparse(cs$formula),
              visits = levels(d$fday), structures = list())
  for (s in names(sts)) {
    r <- tryCatch(gls_case(d, cs$formula, s, sts[[s]]), error = function(e) list(error = conditionMessage(e)))
    res$structures[[s]] <- r
    cat(name, s, if (is.null(r$error)) sprintf("loglik %.6f", r$reml_loglik_nlme) else r$error, "\n")
  }
  res$random_intercept <- tryCatch(lmer_case(d, cs$formula, "fday:trt"),
                                   error = function(e) list(error = conditionMessage(e)))
  out$cases[[name]] <- res
}

# treatment-by-stratum interaction on the SOFA data (compound symmetry = random intercept, lmerTest)
d <- read_case("sofa.csv", "value")
d$stratum <- factor(d$stratum)
f_strat <- y ~ fday * trt + baseline + stratum * trt
out$sofa_by_stratum <- list(
  formula = deparse(f_strat),
  unstructured = gls_case(d, f_strat, "unstructured", structures(nlevels(d$fday))$unstructured),
  random_intercept = lmer_case(d, f_strat, "trt:stratum")
)

writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, dataframe = "rows"),
           "tests/analysis/fixtures/r_mmrm.json")
