"""Fixtures shared by every test package: the real test FHIR server (``fhir_server``)."""

pytest_plugins = ["fhir_server"]
