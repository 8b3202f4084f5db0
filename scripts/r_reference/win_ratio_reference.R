#!/usr/bin/env Rscript
# Reference values for analysis/win_ratio.py. No Debian package computes the win ratio (the CRAN
# packages WinRatio and BuyseTest are not packaged), so this script is a second, independent
# implementation in base R (vectorised with outer(), no code shared with the Python module) of:
# Pocock et al. 2012 pairwise comparisons (death first, the earlier event loses when the other is
# known event-free then; then SOFA response, 1 beats 0; then infection-status rank, lower wins),
# the U-statistic (DeLong-type, n - 1) variance of log(win ratio) by the delta method
# (Bebu & Lachin 2016; Dong et al. 2016), net benefit (Buyse 2010) and the Finkelstein-Schoenfeld
# (1999) test. Data: tests/analysis/fixtures/win_ratio/immunosep.csv (scripts/r_reference/
# win_ratio_data.py) and a small data set with censoring and missing values generated here.
# Run from the repository root: Rscript scripts/r_reference/win_ratio_reference.R
suppressPackageStartupMessages(library(jsonlite))

compare <- function(a, b) {
  # +1 where a (rows) beats b (columns), -1 where it loses, 0 undecided, level by level
  res <- matrix(0L, nrow(a), nrow(b))
  lev <- matrix(-1L, nrow(a), nrow(b))
  ta <- outer(a$time, rep(1, nrow(b))); tb <- outer(rep(1, nrow(a)), b$time)
  ea <- outer(a$event == 1, rep(TRUE, nrow(b))); eb <- outer(rep(TRUE, nrow(a)), b$event == 1)
  death <- ifelse(!is.na(tb) & !is.na(ta) & eb & tb < ta, 1L, 0L) - ifelse(!is.na(ta) & !is.na(tb) & ea & ta < tb, 1L, 0L)
  resp <- sign(outer(a$responder, b$responder, "-"))
  infc <- -sign(outer(a$infection_rank, b$infection_rank, "-"))
  k <- 0L
  for (m in list(death, resp, infc)) {
    m[is.na(m)] <- 0L
    open <- res == 0L & m != 0L
    res[open] <- m[open]
    lev[open] <- k
    k <- k + 1L
  }
  list(res = res, lev = lev)
}

analyse <- function(d) {
  tr <- d[d$treated == 1, ]; ct <- d[d$treated == 0, ]
  n1 <- nrow(tr); n2 <- nrow(ct)
  cmp <- compare(tr, ct)
  w <- (cmp$res == 1) * 1; l <- (cmp$res == -1) * 1
  pw <- mean(w); pl <- mean(l)
  vw <- var(rowMeans(w)) / n1 + var(colMeans(w)) / n2
  vl <- var(rowMeans(l)) / n1 + var(colMeans(l)) / n2
  cwl <- cov(rowMeans(w), rowMeans(l)) / n1 + cov(colMeans(w), colMeans(l)) / n2
  wr <- pw / pl
  se <- sqrt(vw / pw^2 + vl / pl^2 - 2 * cwl / (pw * pl))
  pooled <- rbind(tr, ct)
  u <- rowSums(compare(pooled, pooled)$res)
  n <- n1 + n2
  stat <- sum(u[1:n1]); vfs <- n1 * n2 / (n * (n - 1)) * sum(u^2)
  list(
    n = c(n1, n2), wins = sum(w), losses = sum(l), win_ratio = wr, se_log = se,
    ci = wr * exp(c(-1, 1) * qnorm(0.975) * se), p_value = 2 * pnorm(-abs(log(wr) / se)),
    net_benefit = pw - pl, se_net_benefit = sqrt(vw + vl - 2 * cwl),
    fs_statistic = stat, fs_variance = vfs, fs_p_value = 2 * pnorm(-abs(stat) / sqrt(vfs)),
    treated_wins_by_level = sapply(0:2, function(k) sum(cmp$res == 1 & cmp$lev == k)),
    control_wins_by_level = sapply(0:2, function(k) sum(cmp$res == -1 & cmp$lev == k))
  )
}

immunosep <- read.csv("tests/analysis/fixtures/win_ratio/immunosep.csv")
set.seed(17)
n <- 60
small <- data.frame(participant_id = sprintf("W%03d", 1:n), treated = rep(c(1, 0), each = n / 2))
death <- round(rexp(n, ifelse(small$treated == 1, 1 / 60, 1 / 40)))
censor <- ifelse(runif(n) < 0.2, round(runif(n, 5, 28)), 28)
small$time <- pmax(1, pmin(death, censor, 28))
small$event <- as.integer(death <= pmin(censor, 28))
small$responder <- ifelse(runif(n) < 0.1, NA, as.integer(runif(n) < ifelse(small$treated == 1, 0.45, 0.3)))
small$infection_rank <- ifelse(runif(n) < 0.1, NA, sample(0:3, n, replace = TRUE))

out <- list(
  generated_by = "scripts/r_reference/win_ratio_reference.R",
  r_version = R.version.string,
  packages = list(jsonlite = as.character(packageVersion("jsonlite"))),
  immunosep = analyse(immunosep),
  censored_missing = c(list(data = small), analyse(small))
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"),
           "tests/analysis/fixtures/r_win_ratio.json")
cat("wrote tests/analysis/fixtures/r_win_ratio.json\n")
