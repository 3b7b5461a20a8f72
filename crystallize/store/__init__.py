"""The store: versioned experiment folders, the leases that let runs share them, and the
content-addressed step cache.

Knows nothing of experiments beyond names and fingerprints.
"""

from ._cache import StepCache
from ._store import (
    MARKER,
    ExperimentStore,
    LeaseBook,
    StoredVersion,
    atomic_write,
    path_name_problem,
    unusable_lock,
)

__all__ = [
    "MARKER", "ExperimentStore", "LeaseBook", "StepCache", "StoredVersion", "atomic_write",
    "path_name_problem", "unusable_lock",
]
