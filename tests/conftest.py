"""Fixtures shared by every test package: the real test FHIR server (``fhir_server``).

A test runner may export the terminal's size (pytest-xdist's workers set ``COLUMNS=80``); the
command line's consoles would freeze it at import, so tests start without it and set their own.
"""

import os

for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

pytest_plugins = ["fhir_server"]
