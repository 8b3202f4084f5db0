"""The FastAPI application: REST endpoints, CDS Hooks service and authentication, thin over
trial, protocols and scores.
"""

from immunostrat.api.app import app_from_env, create_app

__all__ = ["app_from_env", "create_app"]
