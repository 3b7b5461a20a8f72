"""The store: versioned experiment folders, the leases that let runs share them, the typed
records they hold, the content-addressed step cache, and stored runs read back as plain data.

Knows nothing of experiments beyond names and fingerprints.
"""

from ._cache import CACHE_DIR, StepCache
from ._history import MetricRow, MetricSummary, StoredRun, last_run, metric_rows, stored_runs
from ._journal import Journal
from ._known_code import KNOWN_CODE, keep_code, recall_code
from ._leases import LeaseBook, StoreWarning, unusable_lock
from ._metadata import SCHEMA_VERSION, ConditionMeta, VersionMetadata, VersionStatus
from ._names import artifact_file
from ._records import (
    ConditionRecord,
    FileRecord,
    Reads,
    StoredValue,
    UnitRecord,
    UnitState,
    UnitTiming,
    content_hash,
    load_value,
    unstorable_leaf,
)
from ._store import (
    MARKER,
    ExperimentStore,
    Removal,
    Scan,
    StoredVersion,
    VersionWriter,
    atomic_write,
    check_name,
    host_name,
    path_name_problem,
)

__all__ = [
    "CACHE_DIR", "KNOWN_CODE", "MARKER", "SCHEMA_VERSION", "ConditionMeta", "ConditionRecord",
    "ExperimentStore", "FileRecord", "Journal", "LeaseBook", "MetricRow", "MetricSummary",
    "Reads", "Removal", "Scan", "StepCache", "StoreWarning", "StoredRun", "StoredValue",
    "StoredVersion", "UnitRecord", "UnitState", "UnitTiming", "VersionMetadata",
    "VersionStatus", "VersionWriter", "artifact_file", "atomic_write", "check_name", "content_hash",
    "host_name", "keep_code", "last_run", "load_value", "metric_rows", "path_name_problem",
    "recall_code", "stored_runs", "unstorable_leaf", "unusable_lock",
]
