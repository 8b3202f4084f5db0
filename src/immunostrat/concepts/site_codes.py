"""A site's own codes for our concepts: a hospital's lab codes (``system|code``, or a bare code as a CSV
``concept`` column holds it) mapped to concept ids, optionally with the unit the site reports them in.

Monocyte HLA-DR has no LOINC code (domain.md D), so a site's laboratory code is the only way its FHIR
Observations and exports can name it. The file (YAML)::

    codes:
      "http://lab.example-hospital.org/codes|HLADR-Q": {concept: mhla_dr, unit: AB/C}
      FERR: {concept: ferritin, unit: ug/L}

A code naming an unknown concept, a unit the concept cannot take, or a code the dictionary already
uses for another concept stops loading with an error naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from immunostrat.concepts.dictionary import load_concepts
from immunostrat.concepts.units import UnitError, conversion_for
from immunostrat.errors import InputError

LOINC_SYSTEM = "http://loinc.org"


class SiteCode(BaseModel):
    """What one site code means: the concept, and the unit a value without its own unit is in."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    concept: str
    unit: str | None = None


class SiteCodesFile(BaseModel):
    """The file as written: a site label (optional) and its codes."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    site: str | None = None
    codes: dict[str, SiteCode]


class SiteCodes:
    """Checked site codes: ``lookup(text)`` for a CSV concept cell, ``for_coding`` for a FHIR coding."""

    def __init__(self, codes: dict[str, SiteCode], source: str) -> None:
        self.codes = codes
        self.source = source

    def lookup(self, text: str | None) -> SiteCode | None:
        """The site code written exactly as ``text`` (``system|code`` or a bare code)."""
        if text is None:
            return None
        return self.codes.get(text.strip())

    def for_coding(self, system: str, code: str) -> SiteCode | None:
        """A FHIR coding: ``system|code``; a bare code key matches only a coding with no system."""
        if system:
            return self.codes.get(f"{system}|{code}")
        return self.codes.get(code)


def parse_site_codes(raw: Any, source: str) -> SiteCodes:
    """Validate a raw mapping (as read from YAML); every problem is an InputError naming the key."""
    if not isinstance(raw, dict):
        raise InputError(
            "site code file is not a mapping", file=source, expected="a YAML mapping with a 'codes:' section"
        )
    try:
        parsed = SiteCodesFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InputError(
            first["msg"],
            file=source,
            field=where,
            value=first.get("input") if not isinstance(first.get("input"), dict) else None,
            expected="codes: {'system|code' or code: {concept: <concept id>, unit: <optional unit>}}",
        ) from None
    concepts = load_concepts()
    checked: dict[str, SiteCode] = {}
    for key, entry in parsed.codes.items():
        field = f"codes.{key}"
        concept_id = concepts.resolve(entry.concept)
        if concept_id is None:
            raise InputError(
                "unknown concept",
                file=source,
                field=field,
                value=entry.concept,
                expected=concepts.unknown_expected(entry.concept),
            )
        if entry.unit is not None:
            try:
                conversion_for(concept_id, entry.unit)
            except UnitError as exc:
                raise InputError(
                    str(exc), file=source, field=field, value=entry.unit, expected=exc.expected
                ) from None
        # A site code must not rename a code the dictionary already reads as another concept.
        system, sep, code = key.rpartition("|")
        taken = (
            concepts.resolve(key) if not sep else (concepts.resolve(code) if system == LOINC_SYSTEM else None)
        )
        if taken is not None and taken != concept_id:
            raise InputError(
                f"code already names concept {taken}",
                file=source,
                field=field,
                value=entry.concept,
                expected=f"a site code that is not an id, LOINC code or alias of another concept ({taken})",
            )
        checked[key.strip()] = SiteCode(concept=concept_id, unit=entry.unit)
    return SiteCodes(checked, source)


def load_site_codes(path: str | Path) -> SiteCodes:
    """Read and check a site code file (YAML)."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise InputError("file not found", file=name, expected="a site code file (YAML)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(
            f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
            file=name,
            row=None if mark is None else mark.line + 1,
            expected="a YAML mapping with a 'codes:' section",
        ) from None
    return parse_site_codes(raw, name)
