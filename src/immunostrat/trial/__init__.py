"""Trial domain without HTTP: models, stratified randomization and minimization, allocation,
hash-chained audit trail, storage (SQLite/PostgreSQL) and the analysis export.
"""

from immunostrat.trial.audit import Actor, AuditVerification, verify_chain
from immunostrat.trial.db import create_database, drop_database, get_engine, make_engine, migrate, transaction
from immunostrat.trial.demo import DemoInfo, create_demo
from immunostrat.trial.export import build_export, write_export
from immunostrat.trial.ops import (
    EXAMPLE_SPEC,
    create_user,
    export_trial,
    init_trial,
    load_trial_spec,
    open_db,
    verify_audit,
)
from immunostrat.trial.randomization import permuted_block_list, pocock_simon
from immunostrat.trial.schemas import ROLES, UNBLINDED_ROLES, TrialSpec
from immunostrat.trial.service import Conflict, Forbidden, NotFound, TrialError, TrialSetup

__all__ = [
    "EXAMPLE_SPEC",
    "ROLES",
    "UNBLINDED_ROLES",
    "Actor",
    "AuditVerification",
    "Conflict",
    "DemoInfo",
    "Forbidden",
    "NotFound",
    "TrialError",
    "TrialSetup",
    "TrialSpec",
    "build_export",
    "create_database",
    "create_demo",
    "create_user",
    "drop_database",
    "export_trial",
    "get_engine",
    "init_trial",
    "load_trial_spec",
    "make_engine",
    "migrate",
    "open_db",
    "permuted_block_list",
    "pocock_simon",
    "transaction",
    "verify_audit",
    "verify_chain",
    "write_export",
]
