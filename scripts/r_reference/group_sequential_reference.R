#!/usr/bin/env Rscript
# Reference values for analysis/group_sequential.py and the survival sample size with accrual,
# follow-up and drop-out (analysis/samplesize.py), computed with rpact (Debian r-cran-rpact).
# Run from the repository root:
#   Rscript scripts/r_reference/group_sequential_reference.R
# which rewrites tests/analysis/fixtures/r_group_sequential.json. The tests do not need R.
suppressPackageStartupMessages({
  library(rpact)
  library(jsonlite)
})

out <- list(
  generated_by = "scripts/r_reference/group_sequential_reference.R",
  r_version = R.version.string,
  packages = list(rpact = as.character(packageVersion("rpact")), jsonlite = as.character(packageVersion("jsonlite")))
)

designs <- list(
  of3 = list(informationRates = c(1 / 3, 2 / 3, 1), typeOfDesign = "asOF", sided = 1, alpha = 0.025, beta = 0.2),
  p3 = list(informationRates = c(1 / 3, 2 / 3, 1), typeOfDesign = "asP", sided = 1, alpha = 0.025, beta = 0.2),
  of4_uneven = list(informationRates = c(0.3, 0.5, 0.8, 1), typeOfDesign = "asOF", sided = 1, alpha = 0.025, beta = 0.1),
  of2_twosided = list(informationRates = c(0.5, 1), typeOfDesign = "asOF", sided = 2, alpha = 0.05, beta = 0.2),
  p3_twosided = list(informationRates = c(0.4, 0.7, 1), typeOfDesign = "asP", sided = 2, alpha = 0.05, beta = 0.1),
  of3_bsof = list(informationRates = c(1 / 3, 2 / 3, 1), typeOfDesign = "asOF", sided = 1, alpha = 0.025, beta = 0.2,
                  typeBetaSpending = "bsOF"),
  of4_bsp = list(informationRates = c(0.25, 0.5, 0.75, 1), typeOfDesign = "asOF", sided = 1, alpha = 0.025, beta = 0.2,
                 typeBetaSpending = "bsP"),
  p3_bsof = list(informationRates = c(0.4, 0.7, 1), typeOfDesign = "asP", sided = 1, alpha = 0.025, beta = 0.1,
                 typeBetaSpending = "bsOF")
)

out$designs <- lapply(designs, function(a) {
  args <- c(list(kMax = length(a$informationRates)), a)
  if (!is.null(a$typeBetaSpending)) args$bindingFutility <- FALSE
  d <- do.call(getDesignGroupSequential, args)
  ch <- getDesignCharacteristics(d)
  list(
    input = a,
    critical_values = d$criticalValues,
    futility_bounds = if (is.null(a$typeBetaSpending)) NULL else d$futilityBounds,
    alpha_spent = d$alphaSpent,
    beta_spent = if (is.null(a$typeBetaSpending)) NULL else d$betaSpent,
    stage_levels = d$stageLevels,
    inflation_factor = ch$inflationFactor,
    shift = ch$shift,
    power = ch$power
  )
})

# survival sizing: Schoenfeld events, uniform accrual, follow-up, exponential drop-out (rpact)
surv <- list(
  list(hazard_ratio = 0.7, median_control_months = 10, accrual_months = 24, followup_months = 12,
       dropout_rate = 0.0, dropout_months = 12, alpha = 0.05, power = 0.8, ratio = 1),
  list(hazard_ratio = 0.75, median_control_months = 6, accrual_months = 18, followup_months = 6,
       dropout_rate = 0.1, dropout_months = 12, alpha = 0.05, power = 0.9, ratio = 1),
  list(hazard_ratio = 0.65, median_control_months = 15, accrual_months = 12, followup_months = 24,
       dropout_rate = 0.05, dropout_months = 12, alpha = 0.05, power = 0.8, ratio = 2)
)
out$survival <- lapply(surv, function(a) {
  d <- getSampleSizeSurvival(
    hazardRatio = a$hazard_ratio, lambda2 = log(2) / a$median_control_months, alpha = a$alpha,
    beta = 1 - a$power, sided = 2, typeOfComputation = "Schoenfeld", allocationRatioPlanned = a$ratio,
    accrualTime = c(0, a$accrual_months), followUpTime = a$followup_months,
    dropoutRate1 = a$dropout_rate, dropoutRate2 = a$dropout_rate, dropoutTime = a$dropout_months
  )
  c(a, list(events = d$eventsFixed, participants = d$nFixed, participants_treated = d$nFixed1,
            participants_control = d$nFixed2))
})
# the same with a group-sequential design (O'Brien-Fleming, three looks): maximum events and participants
gsd <- getDesignGroupSequential(kMax = 3, alpha = 0.025, beta = 0.2, sided = 1, typeOfDesign = "asOF")
d <- getSampleSizeSurvival(gsd, hazardRatio = 0.7, lambda2 = log(2) / 10, accrualTime = c(0, 24),
                           followUpTime = 12, typeOfComputation = "Schoenfeld")
out$survival_group_sequential <- list(
  hazard_ratio = 0.7, median_control_months = 10, accrual_months = 24, followup_months = 12,
  max_events = d$maxNumberOfEvents, max_participants = d$maxNumberOfSubjects
)

# repeated confidence intervals for a difference of means from stage-wise summaries (normal
# approximation, equal variances): rpact inverts the group-sequential test at each stage
rci_design <- getDesignGroupSequential(kMax = 3, alpha = 0.025, sided = 1, typeOfDesign = "asOF",
                                       informationRates = c(1 / 3, 2 / 3, 1))
rci_data <- list(n1 = c(20, 20, 20), n2 = c(20, 20, 20), means1 = c(1.2, 1.0, 1.1), means2 = c(0.4, 0.5, 0.3),
                 stDevs1 = c(1.5, 1.4, 1.6), stDevs2 = c(1.3, 1.5, 1.4))
rci <- getRepeatedConfidenceIntervals(rci_design, dataInput = do.call(getDataset, rci_data),
                                      normalApproximation = TRUE, equalVariances = TRUE, stage = 3)
out$repeated_ci <- c(rci_data, list(information_rates = c(1 / 3, 2 / 3, 1), lower = rci[1, ], upper = rci[2, ]))

writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"),
           "tests/analysis/fixtures/r_group_sequential.json")
cat("wrote tests/analysis/fixtures/r_group_sequential.json\n")
