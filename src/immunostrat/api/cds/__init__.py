"""CDS Hooks 2.0: discovery with prefetch templates, EHR-signed JWTs, FHIR-server fetch of what was
not prefetched (else 412), the patient-view cards with suggestions, and the feedback endpoint.

One module per concern: ``settings`` (clients, public URL, time zone, patient link), ``discovery``,
``jwt_auth``, ``fhir_fetch``, ``cards``, ``patient_view``, ``feedback``.
"""

from fastapi import APIRouter

from immunostrat.api.cds.discovery import PROTOCOL_ID, SERVICE_ID, prefetch_templates, service_description
from immunostrat.api.cds.discovery import router as _discovery
from immunostrat.api.cds.feedback import router as _feedback
from immunostrat.api.cds.patient_view import router as _patient_view

router = APIRouter()
router.include_router(_discovery)
router.include_router(_patient_view)
router.include_router(_feedback)

__all__ = ["PROTOCOL_ID", "SERVICE_ID", "prefetch_templates", "router", "service_description"]
