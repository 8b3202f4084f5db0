"""The CDS service's one hook is stated in the OpenAPI document (a const), so the fuzzer's requests
now reach the prefetch step: found there, a bearer token that no HTTP header can carry (non-ASCII)
was a 500 (UnicodeEncodeError in the FHIR client), and a FHIR URL the client cannot parse escaped
the handler of unreachable servers, and so did a host name IDNA cannot encode. Each runs on each
backend through the real server."""

from __future__ import annotations

from typing import Any

from apiserver import Server

URL = "/cds-services/immunostrat-endotype"


def _hook(**extra: Any) -> dict[str, Any]:
    return {"hook": "patient-view", "hookInstance": "h-1", "context": {"patientId": "p1"}, **extra}


def test_the_hook_is_a_const_and_another_is_refused(server: Server) -> None:
    with server.client("clinician") as c:
        doc = c.get("/openapi.json").json()
        hook = doc["components"]["schemas"]["HookRequest"]["properties"]["hook"]
        assert hook.get("const") == "patient-view" or hook.get("enum") == ["patient-view"]
        r = c.post(URL, json={**_hook(), "hook": "order-select"})
        assert r.status_code == 422 and r.json()["field"] == "hook", r.text


def test_a_token_no_header_can_carry_is_refused_by_the_schema(server: Server) -> None:
    with server.client("clinician") as c:
        doc = c.get("/openapi.json").json()
        token = doc["components"]["schemas"]["FhirAuthorization"]["properties"]["access_token"]
        assert token["pattern"] == "^[A-Za-z0-9._~+/-]+=*$"  # RFC 6750 b64token
        body = _hook(fhirServer="http://127.0.0.1:9/fhir", fhirAuthorization={"access_token": "t\u00f6ken"})
        r = c.post(URL, json=body)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "fhirAuthorization.access_token", r.text
        # the same request with a token a header carries reaches the fetch: the server is down
        body["fhirAuthorization"] = {"access_token": "abc.DEF-123_~+/=="}
        r = c.post(URL, json=body)
        assert r.status_code == 412 and "could not be reached" in r.json()["detail"], r.text


def test_a_fhir_url_the_client_cannot_parse_is_a_412(server: Server) -> None:
    with server.client("clinician") as c:
        for url in ("http://[::1", "https://" + "0" * 64 + "/fhir"):  # the second: IDNA, label > 63
            r = c.post(URL, json=_hook(fhirServer=url))
            assert r.status_code == 412, r.text
            assert "could not be reached" in r.json()["detail"]
        r = c.post(URL, json=_hook(fhirServer="ftp://example.org/fhir"))
        assert r.status_code == 422 and r.json()["field"] == "fhirServer", r.text
