"""The shipped trial files (YAML data): ImmunoSep, the SLE secretome RCT and SEPCELL."""
