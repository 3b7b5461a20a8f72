"""The store: versioned experiment folders, the leases that let runs share them, the typed
records they hold, and the content-addressed step cache.

Knows nothing of experiments beyond names and fingerprints.
"""

from ._cache import StepCache
from ._leases import LeaseBook, StoreWarning, unusable_lock
from ._records import (
    SCHEMA_VERSION,
    ConditionMeta,
    ConditionRecord,
    FileRecord,
    StoredValue,
    UnitRecord,
    UnitState,
    VersionMetadata,
    VersionStatus,
    content_hash,
    file_hash,
    unstorable_leaf,
)
from ._store import (
    MARKER,
    ExperimentStore,
    Removal,
    Scan,
    StoredVersion,
    atomic_write,
    check_name,
    path_name_problem,
)

__all__ = [
    "MARKER", "SCHEMA_VERSION", "ConditionMeta", "ConditionRecord", "ExperimentStore",
    "FileRecord", "LeaseBook", "Removal", "Scan", "StepCache", "StoreWarning", "StoredValue",
    "StoredVersion", "UnitRecord", "UnitState", "VersionMetadata", "VersionStatus",
    "atomic_write", "check_name", "content_hash", "file_hash", "path_name_problem",
    "unstorable_leaf", "unusable_lock",
]
