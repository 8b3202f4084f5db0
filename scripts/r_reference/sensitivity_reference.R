#!/usr/bin/env Rscript
# Reference values for analysis/sensitivity.py: Rubin's rules with the Barnard-Rubin df as
# mice::pool.scalar computes them (Debian r-cran-mice), on fixed inputs written here. The imputations
# themselves are random draws and are checked by their properties in the tests, not against R.
# Run from the repository root: Rscript scripts/r_reference/sensitivity_reference.R
suppressPackageStartupMessages({
  library(mice)
  library(jsonlite)
})
cases <- list(
  list(Q = c(-3.10, -3.25, -2.98, -3.31, -3.05), U = c(0.29, 0.31, 0.28, 0.30, 0.295), n = 30, k = 3),
  list(Q = c(-1.02, -1.11, -1.07, -0.95, -1.15, -1.08, -1.01, -1.12), U = rep(0.12, 8) + (1:8) / 1000, n = 272, k = 3),
  list(Q = c(0.5, 0.9, 0.2), U = c(0.04, 0.05, 0.045), n = 12, k = 3)
)
out <- list(
  generated_by = "scripts/r_reference/sensitivity_reference.R",
  r_version = R.version.string,
  packages = list(mice = as.character(packageVersion("mice")), jsonlite = as.character(packageVersion("jsonlite"))),
  pool_scalar = lapply(cases, function(a) {
    p <- pool.scalar(a$Q, a$U, n = a$n, k = a$k)
    c(a, list(qbar = p$qbar, t = p$t, b = p$b, ubar = p$ubar, df = p$df, fmi = p$fmi, r = p$r))
  })
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "tests/analysis/fixtures/r_sensitivity.json")
cat("wrote tests/analysis/fixtures/r_sensitivity.json\n")
