"""Clinical unit conversion: pint for the dimensional part, the dictionary for the rest.

One place adds what pint lacks: analyte molar masses (mg/dL <-> umol/L via the dictionary's
``molar_mass_g_per_mol``), per-cell counts (``AB/C``), weight-based drug rates, and the spellings
clinicians and UCUM use (``mm[Hg]``, ``10*9/L``, ``x10^3/uL``, ``µmol/L``, ``mcg/kg/min``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import pint

from immunostrat.concepts.dictionary import Concept, FactorUnit, load_concepts

DECIMALS = 9
UREG: pint.UnitRegistry = pint.UnitRegistry(autoconvert_offset_to_baseunit=True)
# Units pint does not define. A day's urine volume and per-high-power-field counts need no more.
UREG.define("hpf = [high_power_field]")


class UnitError(ValueError):
    """A unit that is unknown, missing, or incompatible with the concept's canonical unit."""

    def __init__(self, message: str, expected: str) -> None:
        super().__init__(message)
        self.expected = expected


@dataclass(frozen=True)
class Conversion:
    """canonical = (value * scale + offset) / (weight_kg if per_weight_kg else 1).

    Results are rounded to ``DECIMALS`` places so that float noise (1.9999999999 for 2.0) never moves
    a value across a band edge; no clinical measurement carries that many decimals.
    """

    concept: str
    unit: str
    scale: float
    offset: float = 0.0
    per_weight_kg: bool = False

    def apply(self, value: float, weight_kg: float | None = None) -> float:
        result = value * self.scale + self.offset
        if self.per_weight_kg:
            if weight_kg is None or not weight_kg > 0:
                raise UnitError(
                    f"{self.concept} in {self.unit!r} needs the patient's body weight",
                    "a weight_kg in the patient table, or a rate per kg",
                )
            result /= weight_kg
        return round(result, DECIMALS)


_SPELLINGS: list[tuple[str, str]] = [
    (r"[µμ]", "u"),
    (r"mcg", "ug"),
    (r"mm\[Hg\]", "mmHg"),
    (r"\[iU\]|\[IU\]|\bIU\b|\bunits?\b", "U"),
    (r"\bhrs?\b", "h"),
    (r"\bcc\b", "mL"),
    (r"\bCel\b", "degC"),
    (r"\[degF\]", "degF"),
    (r"°C", "degC"),
    (r"°F", "degF"),
    (r"\{[^}]*\}", ""),  # UCUM annotations such as {beats} carry no dimension
    (r"^[xX]\s*10\^", "1e"),
    (r"^[xX]\s*10\*", "1e"),
    (r"^10\^", "1e"),
    (r"^10\*", "1e"),
    (r"\^", "**"),
    (r"/mm3\b", "/mm**3"),
]


def normalise_spelling(unit: str) -> str:
    """Rewrite a clinical or UCUM unit spelling into a pint expression."""
    text = unit.strip()
    for pattern, replacement in _SPELLINGS:
        text = re.sub(pattern, replacement, text)
    text = text.strip()
    if text.startswith("/"):
        text = "1" + text
    return text


def _quantity(expression: str) -> pint.Quantity:
    if expression in {"", "1"}:
        return UREG.Quantity(1.0, "dimensionless")
    parsed = UREG.parse_expression(expression)
    if isinstance(parsed, UREG.Quantity):
        return parsed
    return UREG.Quantity(float(parsed), "dimensionless")


def _affine(source: pint.Quantity, target: pint.Quantity) -> tuple[float, float]:
    """(scale, offset) with target = scale * source + offset, both as quantities with magnitude."""

    def convert(x: float) -> float:
        value = UREG.Quantity(x * source.magnitude, source.units).to(target.units).magnitude
        return float(value) / float(target.magnitude)

    offset = convert(0.0)
    return convert(1.0) - offset, offset


_SUBSTANCE = UREG.parse_units("mol/L").dimensionality
_MASS_CONC = UREG.parse_units("g/L").dimensionality
_MASS = UREG.parse_units("kg").dimensionality


def _pint_understands(spelled: str) -> bool:
    try:
        _quantity(normalise_spelling(spelled))
    except Exception:  # pint raises assorted errors on free text
        return False
    return True


def _molar_mass(equivalence: str) -> pint.Quantity:
    """g/mol implied by a statement such as "1 mg/dL = 17.1 umol/L" (domain.md section D)."""
    left, right = (_quantity(normalise_spelling(side)) for side in equivalence.split("="))
    mass, molar = (left, right) if left.dimensionality == _MASS_CONC else (right, left)
    if mass.dimensionality != _MASS_CONC or molar.dimensionality != _SUBSTANCE:
        raise ValueError(f"molar_equivalence {equivalence!r} must equate a mass and a molar concentration")
    return (mass / molar).to("g/mol")


def _expected(concept: Concept) -> str:
    shown = [u for u in concept.units if u] or [concept.canonical_unit]
    return f"one of {', '.join(repr(u) for u in shown)} (canonical {concept.canonical_unit!r})"


@cache
def conversion_for(concept_id: str, unit: str | None) -> Conversion:
    """The conversion of ``unit`` into the canonical unit of ``concept_id``; raises UnitError."""
    concept = load_concepts()[concept_id]
    spelled = "" if unit is None else str(unit).strip()
    target = concept.units.get(spelled)
    if target is None and not _pint_understands(spelled):
        # Case-insensitive only where pint cannot read the spelling itself ("MMHG"), so that "g/L"
        # (grams) never matches the count unit "G/L" (giga per litre).
        folded = {k.lower().replace(" ", ""): v for k, v in concept.units.items()}
        target = folded.get(spelled.lower().replace(" ", ""))
    if isinstance(target, FactorUnit):
        return Conversion(concept_id, spelled, target.factor)
    if target is None and spelled == "":
        raise UnitError(f"{concept_id} needs a unit", _expected(concept))
    expression = target if target is not None else normalise_spelling(spelled)
    try:
        source_q = _quantity(expression)
    except (pint.errors.UndefinedUnitError, pint.errors.DefinitionSyntaxError, ValueError, TypeError) as exc:
        raise UnitError(f"unknown unit {spelled!r} for {concept_id}", _expected(concept)) from exc
    except Exception as exc:  # pint raises assorted tokenizer errors on free text
        raise UnitError(f"unknown unit {spelled!r} for {concept_id}", _expected(concept)) from exc
    canonical_target = concept.units.get(concept.canonical_unit, concept.canonical_unit)
    if isinstance(canonical_target, FactorUnit):
        # A unit pint does not know (AB/C, IU/mL): only the listed spellings are accepted.
        raise UnitError(f"unit {spelled!r} cannot measure {concept_id}", _expected(concept))
    canonical_q = _quantity(canonical_target if isinstance(canonical_target, str) else concept.canonical_unit)
    src_dim, can_dim = source_q.dimensionality, canonical_q.dimensionality
    if src_dim == can_dim:
        scale, offset = _affine(source_q, canonical_q)
        return Conversion(concept_id, spelled, scale, offset)
    if concept.molar_equivalence is not None and {src_dim, can_dim} == {_SUBSTANCE, _MASS_CONC}:
        per_mol = _molar_mass(concept.molar_equivalence)
        bridged = source_q * per_mol if src_dim == _SUBSTANCE else source_q / per_mol
        scale, offset = _affine(bridged.to_base_units(), canonical_q)
        return Conversion(concept_id, spelled, scale, offset)
    if concept.weight_based and src_dim / _MASS == can_dim:
        per_kg = source_q / UREG.Quantity(1.0, "kg")
        scale, _ = _affine(per_kg, canonical_q)
        return Conversion(concept_id, spelled, scale, 0.0, per_weight_kg=True)
    raise UnitError(f"unit {spelled!r} cannot measure {concept_id}", _expected(concept))


def to_canonical(concept_id: str, value: float, unit: str | None, weight_kg: float | None = None) -> float:
    """Convert one value into the canonical unit of ``concept_id``."""
    return conversion_for(concept_id, unit).apply(value, weight_kg)
