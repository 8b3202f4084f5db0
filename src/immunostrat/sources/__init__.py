"""One mapping file per clinical database (MIMIC-IV, eICU, PhysioNet 2019, OMOP, FHIR, long)
and the small loaders that turn each into raw long observations for `concepts`.
"""
