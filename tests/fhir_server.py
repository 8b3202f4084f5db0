"""A real FHIR R4 server for the tests: ``tests/fhirserver`` (node-fhir-server-core, in memory),
started once per session on a free loopback port with a random bearer token.

Any test under ``tests/`` gets the ``fhir_server`` fixture through ``tests/conftest.py``; code that
needs the class itself can ``from fhir_server import FhirServer``. The server's node modules are
installed on first use (``npm ci``); without Node.js/npm the fixture fails with a message saying so.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

SERVER_DIR = Path(__file__).resolve().parent / "fhirserver"
READY_PATTERN = re.compile(r"FHIR server ready at (http://\S+)")
START_TIMEOUT_S = 60.0
INSTALL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class FhirServer:
    """A running test FHIR server: ``base_url`` is the FHIR base (``.../4_0_0``); every request but
    ``/metadata`` needs ``Authorization: Bearer <token>``."""

    base_url: str
    token: str

    @property
    def authorization(self) -> str:
        """The header value a CDS Hooks request carries as ``fhirAuthorization.access_token``."""
        return f"Bearer {self.token}"

    def client(self, authorized: bool = True, timeout_s: float = 30.0) -> httpx.Client:
        headers = {"Accept": "application/fhir+json"}
        if authorized:
            headers["Authorization"] = self.authorization
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def load(self, bundle_or_resources: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[str]:
        """Store resources (a transaction/batch Bundle, or resources: PUT when they carry an id, else
        POST) and return the ``Type/id`` of each entry in order. Fails on any entry not stored."""
        if isinstance(bundle_or_resources, Mapping) and bundle_or_resources.get("resourceType") == "Bundle":
            bundle = dict(bundle_or_resources)
        elif isinstance(bundle_or_resources, Mapping):
            bundle = transaction_bundle([bundle_or_resources])
        else:
            bundle = transaction_bundle(bundle_or_resources)
        with self.client() as client:
            response = client.post("", json=bundle, headers={"Content-Type": "application/fhir+json"})
        if response.status_code != 200:
            raise AssertionError(f"FHIR upload failed: {response.status_code} {response.text}")
        locations = []
        for index, entry in enumerate(response.json().get("entry", [])):
            status = str(entry["response"]["status"])
            if not status.startswith("2"):
                raise AssertionError(f"FHIR upload entry {index} failed: {entry['response']}")
            location = str(entry["response"].get("location", ""))
            locations.append("/".join(location.split("/")[:2]))
        return locations


def transaction_bundle(resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle that PUTs resources with an id and POSTs the others."""
    entries = []
    for resource in resources:
        kind = resource["resourceType"]
        if "id" in resource:
            request = {"method": "PUT", "url": f"{kind}/{resource['id']}"}
        else:
            request = {"method": "POST", "url": kind}
        entries.append({"resource": dict(resource), "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"the test FHIR server needs `{name}` (Node.js 18+ and npm) on PATH; "
            "install them (Debian: apt-get install nodejs npm) — .ci/run does this",
            pytrace=False,
        )
    return path


def ensure_installed() -> None:
    """Install the server's pinned node modules (package-lock.json) unless already there."""
    if (SERVER_DIR / "node_modules" / "@asymmetrik" / "node-fhir-server-core").is_dir():
        return
    npm = _require_tool("npm")
    # --ignore-scripts: no install hook of the dependency tree is needed to run the server
    command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"]
    result = subprocess.run(
        command, cwd=SERVER_DIR, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"`npm ci` for the test FHIR server failed ({result.returncode}):\n{result.stderr[-4000:]}",
            pytrace=False,
        )


def start_server(log_path: Path, token: str) -> tuple[subprocess.Popen[bytes], FhirServer]:
    """Start the server on a free loopback port and wait (bounded) until /metadata answers."""
    node = _require_tool("node")
    ensure_installed()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [node, "server.js", "--port", "0", "--host", "127.0.0.1", "--token", token],
        cwd=SERVER_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NODE_ENV": "production"},
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    base_url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        match = READY_PATTERN.search(log_path.read_text(errors="replace"))
        if match:
            base_url = match.group(1)
            try:
                if httpx.get(f"{base_url}/metadata", timeout=5).status_code == 200:
                    return proc, FhirServer(base_url, token)
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    stop_server(proc)
    pytest.fail(
        f"the test FHIR server did not answer /metadata within {START_TIMEOUT_S:.0f} s "
        f"(exit code {proc.returncode}, base {base_url}); its log:\n{log_path.read_text(errors='replace')}",
        pytrace=False,
    )


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServer]:
    """One FHIR server for the session; tests keep apart by using their own patient ids."""
    log_path = tmp_path_factory.mktemp("fhir-server") / "server.log"
    proc, server = start_server(log_path, secrets.token_urlsafe(24))
    try:
        yield server
    finally:
        stop_server(proc)
