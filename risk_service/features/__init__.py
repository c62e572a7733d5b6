"""Every risk feature, declared once (``spec``) and computed two ways that agree exactly.

``OnlineFeatureEngine`` computes features per event from per-entity state (bounded
memory per entity); ``compute_offline_features`` computes the same features over a
whole table, point-in-time.  See ``docs/features.md`` for definitions and boundaries.
"""

from risk_service.features.offline import (
    compute_offline_credit_features,
    compute_offline_features,
)
from risk_service.features.online import OnlineFeatureEngine, request_time_features
from risk_service.features.spec import (
    CATEGORICAL_FEATURES,
    CREDIT_FEATURE_NAMES,
    FEATURE_DESCRIPTIONS,
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    LABEL_KINDS,
)
from risk_service.features.store import MemoryStateStore, StateStore

__all__ = [
    "CATEGORICAL_FEATURES",
    "CREDIT_FEATURE_NAMES",
    "FEATURE_DESCRIPTIONS",
    "FEATURE_NAMES",
    "FEATURE_SET_VERSION",
    "LABEL_KINDS",
    "MemoryStateStore",
    "OnlineFeatureEngine",
    "StateStore",
    "compute_offline_credit_features",
    "compute_offline_features",
    "request_time_features",
]
