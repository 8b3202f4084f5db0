"""immunostrat: biomarker-guided precision immunotherapy in sepsis and immune-mediated disease.

Layers (imports run downward only): concepts -> scores/sources -> protocols -> cohort/trial/analysis
-> simulation -> cli/api/web. See the README's architecture section.
"""

__version__ = "0.1.0"
