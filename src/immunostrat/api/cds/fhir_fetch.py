"""What the CDS Client did not prefetch, fetched from its FHIR server (CDS Hooks 2.0, "FHIR resource
access"): the service's own prefetch templates, the client's ``fhirAuthorization`` bearer token, a
bounded timeout and response size. Without the data and without a way to fetch it the service
answers 412 Precondition Failed, as the specification says."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from fastapi import HTTPException

from immunostrat.api.cds.discovery import fill_template, prefetch_templates

FETCH_TIMEOUT_S = 5.0
MAX_RESPONSE_BYTES = 5 * 1024 * 1024


def precondition_failed(message: str) -> HTTPException:
    return HTTPException(status_code=412, detail=message)


def get_json(client: httpx.Client, url: str) -> Any:
    with client.stream("GET", url, headers={"Accept": "application/fhir+json"}) as r:
        if r.status_code != 200:
            raise precondition_failed(f"the FHIR server answered {r.status_code} for {url}")
        body = b""
        for chunk in r.iter_bytes():
            body += chunk
            if len(body) > MAX_RESPONSE_BYTES:
                raise precondition_failed(
                    f"the FHIR server's answer for {url} exceeds {MAX_RESPONSE_BYTES} bytes"
                )
    try:
        return json.loads(body)
    except ValueError:
        raise precondition_failed(f"the FHIR server's answer for {url} is not JSON") from None


def complete_prefetch(
    prefetch: Mapping[str, Any] | None,
    context: Mapping[str, Any],
    fhir_server: str | None,
    fhir_authorization: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], list[str]]:
    """Every template's data: prefetched, else fetched. Returns the data and the keys fetched.

    A key that is absent or null was not prefetched (CDS Hooks 2.0: a failed prefetch is null)."""
    have = {k: v for k, v in (prefetch or {}).items() if v is not None}
    missing = [k for k in prefetch_templates() if k not in have]
    if not missing:
        return have, []
    if not fhir_server:
        raise precondition_failed(
            f"prefetch missing for {', '.join(missing)} and no fhirServer to fetch it from"
        )
    headers: dict[str, str] = {}
    token = (fhir_authorization or {}).get("access_token")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = fhir_server.rstrip("/")
    try:
        with httpx.Client(timeout=FETCH_TIMEOUT_S, headers=headers, follow_redirects=False) as client:
            for key in missing:
                query = fill_template(prefetch_templates()[key], dict(context))
                have[key] = get_json(client, f"{base}/{query}")
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        # InvalidURL is no HTTPError, and a host name IDNA cannot encode (a label over 63
        # characters) is a UnicodeError: each is a server that cannot be reached, not a crash
        raise precondition_failed(
            f"the FHIR server {base} could not be reached: {type(exc).__name__}"
        ) from None
    return have, missing
