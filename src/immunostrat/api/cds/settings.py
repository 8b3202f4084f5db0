"""CDS Hooks settings: the EHR clients allowed to call, the public URL, the site's time zone and the
patient-page link. Read once per application from the environment:

- ``IMMUNOSTRAT_CDS_CLIENTS``: a YAML or JSON file listing the EHR clients (see :class:`CdsClient`)::

      clients:
        - iss: https://ehr.example.org          # the JWT issuer, exactly
          jwks_url_allowed: [https://ehr.example.org/.well-known/jwks.json]   # jku values accepted
          jwks: {keys: [...]}                    # and/or public keys inline
          jwks_file: ehr-jwks.json               # and/or a JWKS file (relative to this file)

- ``IMMUNOSTRAT_PUBLIC_URL``: this service's public base URL (JWT ``aud`` is
  ``{base}/cds-services/{id}``); default: the URL the request arrived at.
- ``IMMUNOSTRAT_TIMEZONE``: IANA time zone for times on cards (default ``UTC``).
- ``IMMUNOSTRAT_PATIENT_PAGE_URL``: a URL template with ``{patient_id}`` for the card's link to the
  patient's page in the web app. Unset: the link is the app's own bedside patient page
  (``{public base}/web/bedside/patients/{patient_id}``) when ``IMMUNOSTRAT_FHIR_BASE_URL`` is set
  (that page loads the patient from there), and there is no link otherwise (a page that could not
  load the patient is no use to follow).
- ``IMMUNOSTRAT_FHIR_BASE_URL``, ``IMMUNOSTRAT_FHIR_TOKEN``: the FHIR R4 server the bedside patient
  page reads the patient's Patient, Observations and MedicationAdministrations from (the token, if
  any, is sent as ``Authorization: Bearer``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from immunostrat.errors import InputError

CLIENTS_ENV = "IMMUNOSTRAT_CDS_CLIENTS"
PUBLIC_URL_ENV = "IMMUNOSTRAT_PUBLIC_URL"
TIMEZONE_ENV = "IMMUNOSTRAT_TIMEZONE"
PATIENT_PAGE_ENV = "IMMUNOSTRAT_PATIENT_PAGE_URL"
FHIR_BASE_ENV = "IMMUNOSTRAT_FHIR_BASE_URL"
FHIR_TOKEN_ENV = "IMMUNOSTRAT_FHIR_TOKEN"
BEDSIDE_PATIENT_PATH = "/web/bedside/patients/{patient_id}"
"""The web app's patient page (``immunostrat.web.bedside``): the card link's default."""


class CdsClient(BaseModel):
    """One EHR allowed to call: its issuer and where its public keys come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    iss: str = Field(min_length=1)
    name: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_file: str | None = None
    jwks_url_allowed: tuple[str, ...] = ()


class CdsClientsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clients: list[CdsClient] = Field(default_factory=list)


@dataclass(frozen=True)
class CdsSettings:
    clients: dict[str, CdsClient] = field(default_factory=dict)
    public_url: str | None = None
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    patient_page_url: str | None = None
    fhir_base_url: str | None = None
    fhir_token: str | None = None


def load_clients(path: str | Path) -> dict[str, CdsClient]:
    """The clients file (YAML or JSON); ``jwks_file`` entries are read and checked here, at start."""
    p = Path(path)
    if not p.exists():
        raise InputError("CDS clients file not found", file=str(p), field=CLIENTS_ENV)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        parsed = CdsClientsFile.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise InputError(
            f"not a CDS clients file: {exc}", file=str(p), expected="clients: [{iss, jwks...}]"
        ) from None
    clients: dict[str, CdsClient] = {}
    for client in parsed.clients:
        if client.jwks_file:
            key_file = Path(client.jwks_file)
            key_file = key_file if key_file.is_absolute() else p.parent / key_file
            try:
                keys = json.loads(key_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(
                    f"JWKS file unreadable: {exc}", file=str(key_file), field="jwks_file"
                ) from None
            client = client.model_copy(update={"jwks": keys, "jwks_file": str(key_file)})
        if client.jwks is None and not client.jwks_url_allowed:
            raise InputError(
                "a client needs public keys",
                file=str(p),
                field="clients",
                value=client.iss,
                expected="jwks, jwks_file or jwks_url_allowed",
            )
        clients[client.iss] = client
    return clients


def settings_from_env() -> CdsSettings:
    clients_path = os.environ.get(CLIENTS_ENV)
    zone_name = os.environ.get(TIMEZONE_ENV) or "UTC"
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(
            "unknown time zone",
            field=TIMEZONE_ENV,
            value=zone_name,
            expected="an IANA name such as Europe/Berlin",
        ) from None
    page = os.environ.get(PATIENT_PAGE_ENV) or None
    if page is not None and "{patient_id}" not in page:
        raise InputError("the patient page URL needs {patient_id}", field=PATIENT_PAGE_ENV, value=page)
    fhir_base = (os.environ.get(FHIR_BASE_ENV) or "").strip().rstrip("/") or None
    if fhir_base is not None and not fhir_base.startswith(("http://", "https://")):
        raise InputError("the FHIR base URL must be http(s)", field=FHIR_BASE_ENV, value=fhir_base)
    return CdsSettings(
        clients=load_clients(clients_path) if clients_path else {},
        public_url=(os.environ.get(PUBLIC_URL_ENV) or "").rstrip("/") or None,
        timezone=zone,
        patient_page_url=page,
        fhir_base_url=fhir_base,
        fhir_token=os.environ.get(FHIR_TOKEN_ENV) or None,
    )


def cds_settings(request: Request) -> CdsSettings:
    """The application's CDS settings (``app.state.cds_settings``, else the environment, read once),
    with the patient-page link defaulted for this request (see :func:`patient_page_default`)."""
    state = request.app.state
    settings = getattr(state, "cds_settings", None)
    if settings is None:
        settings = settings_from_env()
        state.cds_settings = settings
    return patient_page_default(request, settings)


def patient_page_default(request: Request, settings: CdsSettings) -> CdsSettings:
    """Without ``IMMUNOSTRAT_PATIENT_PAGE_URL``, the card links to the app's own bedside patient
    page on its public base, when a FHIR server to load the patient from is configured."""
    if settings.patient_page_url is not None or settings.fhir_base_url is None:
        return settings
    return replace(settings, patient_page_url=public_base(request, settings) + BEDSIDE_PATIENT_PATH)


def public_base(request: Request, settings: CdsSettings) -> str:
    return settings.public_url or str(request.base_url).rstrip("/")
