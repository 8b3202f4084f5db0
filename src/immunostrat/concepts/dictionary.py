"""The concept dictionary: loaded from ``concepts.yaml`` (data), validated once, cached."""

from __future__ import annotations

import difflib
import re
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator, model_validator

ValueType = Literal["numeric", "binary", "count"]


def loinc_check_digit(code_number: str) -> int:
    """LOINC mod-10 check digit of the code number (the part before the hyphen).

    The LOINC Users' Guide (appendix "Calculating Mod 10 check digits"): from the right, double the
    digits in odd positions, add the digit sums of the doubled and the remaining digits; the check
    digit takes the total up to the next multiple of ten.
    """
    if not code_number.isdigit():
        raise ValueError(f"LOINC code number must be digits, got {code_number!r}")
    total = 0
    for position, char in enumerate(reversed(code_number), start=1):
        digit = int(char)
        if position % 2 == 1:
            doubled = digit * 2
            total += doubled // 10 + doubled % 10
        else:
            total += digit
    return (10 - total % 10) % 10


def is_valid_loinc(code: str) -> bool:
    """True when ``code`` has the form NNNN-C and C is its mod-10 check digit."""
    number, sep, check = code.partition("-")
    if not sep or not number.isdigit() or len(check) != 1 or not check.isdigit():
        return False
    return loinc_check_digit(number) == int(check)


class FactorUnit(BaseModel):
    """A unit pint cannot express, given as a plain factor into the canonical unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    factor: float


def name_key(text: str) -> str:
    """How a concept name is compared: case, spaces, '_' and '-' do not matter ("mHLA-DR" = "mhla_dr")."""
    return " ".join(part for part in re.split(r"[\s_\-]+", text.casefold()) if part)


class UnitSlipFloor(BaseModel):
    """A value below ``below`` (canonical unit) is taken for a unit slip, never for a measurement.

    The error names the measurement the floor belongs to and what the number probably meant; ``did_you_mean``
    may use ``{thousands}``: the value times 1,000, as written with a thousands separator.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    below: float
    measurement: str
    did_you_mean: str
    source: str


class Concept(BaseModel):
    """One clinical measurement: canonical unit, accepted units, plausible range, LOINC codes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    description: str
    category: str
    canonical_unit: str
    units: dict[str, str | FactorUnit]
    plausible: tuple[float, float]
    loinc: tuple[str, ...] = ()
    local_code: str | None = None
    value_type: ValueType = "numeric"
    molar_equivalence: str | None = None
    weight_based: bool = False
    range_hint: str | None = None
    aliases: tuple[str, ...] = ()
    unit_slip_floor: UnitSlipFloor | None = None

    @field_validator("loinc")
    @classmethod
    def _check_loinc(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        for code in codes:
            if not is_valid_loinc(code):
                raise ValueError(f"LOINC code {code!r} fails the mod-10 check digit")
        return codes

    @model_validator(mode="after")
    def _check_range(self) -> Concept:
        low, high = self.plausible
        if low > high:
            raise ValueError(f"{self.id}: plausible range {self.plausible} is empty")
        if not self.loinc and not self.local_code:
            raise ValueError(f"{self.id}: needs a LOINC code or a local_code")
        return self

    @property
    def code(self) -> str:
        """The preferred code: the first LOINC, else the local code."""
        return self.loinc[0] if self.loinc else str(self.local_code)

    def range_text(self) -> str:
        """What a plausible value looks like, for error messages."""
        if self.range_hint:
            return self.range_hint
        unit = "" if self.canonical_unit == "1" else f" {self.canonical_unit}"
        return f"{self.plausible[0]:g} to {self.plausible[1]:g}{unit} (check the unit)"

    @property
    def accepted_units(self) -> list[str]:
        return list(self.units)

    def unit_slip_text(self, canonical_value: float) -> tuple[str, str]:
        """(message, expected) for a value below the unit-slip floor."""
        floor = self.unit_slip_floor
        if floor is None:
            raise ValueError(f"{self.id} has no unit-slip floor")
        unit = self.canonical_unit
        message = (
            f"{self.id} {canonical_value:g} {unit} is below {floor.below:,g} {unit}, "
            f"the floor for {floor.measurement}"
        )
        expected = f"at least {floor.below:,g} {unit}: " + floor.did_you_mean.format(
            thousands=f"{canonical_value * 1000:,.0f}"
        )
        return message, expected


class ConceptDictionary(BaseModel):
    """All concepts by id; lookup by id, LOINC code, local code or alias (``resolve``)."""

    model_config = ConfigDict(frozen=True)
    concepts: dict[str, Concept]
    _names: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _index_names(self) -> ConceptDictionary:
        # One name, one concept: an alias that could mean two concepts is refused at load, not guessed.
        names: dict[str, str] = {}
        for concept in self.concepts.values():
            for name in (concept.id, *concept.loinc, *filter(None, [concept.local_code]), *concept.aliases):
                key = name_key(name)
                other = names.setdefault(key, concept.id)
                if other != concept.id:
                    raise ValueError(f"name {name!r} is ambiguous: it names both {other} and {concept.id}")
        self._names = names
        return self

    def resolve(self, name: str | None) -> str | None:
        """The concept id a name stands for: an id (any case), a LOINC code, a local code or an alias."""
        if name is None:
            return None
        return self._names.get(name_key(name))

    def suggest(self, name: str, n: int = 3) -> list[str]:
        """The concept ids nearest to an unknown name (by id or alias), best first."""
        keys = difflib.get_close_matches(name_key(name), list(self._names), n=n * 3, cutoff=0.6)
        return list(dict.fromkeys(self._names[k] for k in keys))[:n]

    def unknown_expected(self, name: str) -> str:
        """The 'expected' text of an unknown-concept error, with the nearest ids when there are any."""
        text = "a concept id, LOINC code or alias from `immunostrat concepts`"
        nearest = self.suggest(name) if name else []
        return f"{text} (nearest: {', '.join(nearest)})" if nearest else text

    def __getitem__(self, concept_id: str) -> Concept:
        return self.concepts[concept_id]

    def __contains__(self, concept_id: object) -> bool:
        return concept_id in self.concepts

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.concepts.values())

    def __len__(self) -> int:
        return len(self.concepts)

    def ids(self) -> list[str]:
        return list(self.concepts)

    def by_loinc(self, code: str) -> Concept | None:
        for concept in self.concepts.values():
            if code in concept.loinc:
                return concept
        return None


def _binary_finding(concept_id: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "category": "lupus_finding",
        "canonical_unit": "1",
        "units": {"1": "1", "": "1"},
        "value_type": "binary",
        "plausible": [0, 1],
        "loinc": [],
        "local_code": "IMMUNOSTRAT-" + concept_id.upper().replace("_", "-"),
    }


def parse_dictionary(raw: dict[str, Any]) -> ConceptDictionary:
    """Validate a raw dictionary mapping (as read from YAML)."""
    entries: dict[str, Any] = dict(raw.get("concepts", {}))
    for concept_id, description in raw.get("lupus_findings", {}).items():
        entries[concept_id] = _binary_finding(concept_id, description)
    concepts = {cid: Concept(id=cid, **entry) for cid, entry in entries.items()}
    return ConceptDictionary(concepts=concepts)


@cache
def load_concepts() -> ConceptDictionary:
    """The shipped concept dictionary (``concepts.yaml``), parsed and checked once."""
    text = resources.files("immunostrat.concepts").joinpath("concepts.yaml").read_text(encoding="utf-8")
    return parse_dictionary(yaml.safe_load(text))
