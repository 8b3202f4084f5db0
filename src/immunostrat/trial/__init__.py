"""Trial domain without HTTP: models, stratified randomization and minimization, allocation,
hash-chained audit trail, storage (SQLite/PostgreSQL) and the analysis export.
"""

from typing import TYPE_CHECKING

from immunostrat.lazy import lazy_exports

if TYPE_CHECKING:
    from immunostrat.trial.audit import Actor, AuditVerification, verify_chain
    from immunostrat.trial.db import (
        create_database,
        drop_database,
        get_engine,
        make_engine,
        migrate,
        transaction,
    )
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

# submodule -> the names it exports, imported on first use (immunostrat.lazy)
_SUBMODULE_EXPORTS: dict[str, tuple[str, ...]] = {
    "audit": ("Actor", "AuditVerification", "verify_chain"),
    "db": ("create_database", "drop_database", "get_engine", "make_engine", "migrate", "transaction"),
    "demo": ("DemoInfo", "create_demo"),
    "export": ("build_export", "write_export"),
    "ops": (
        "EXAMPLE_SPEC",
        "create_user",
        "export_trial",
        "init_trial",
        "load_trial_spec",
        "open_db",
        "verify_audit",
    ),
    "randomization": ("permuted_block_list", "pocock_simon"),
    "schemas": ("ROLES", "UNBLINDED_ROLES", "TrialSpec"),
    "service": ("Conflict", "Forbidden", "NotFound", "TrialError", "TrialSetup"),
}
__getattr__ = lazy_exports(__name__, {n: m for m, names in _SUBMODULE_EXPORTS.items() for n in names})

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
