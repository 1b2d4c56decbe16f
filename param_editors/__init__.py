"""Editors that write edits into a model's weights: ROME (one edit, one layer) and MEMIT
(a batch over a run of layers), with what they share: activation tracing, key covariance
statistics, the value optimisation, weight deltas, and the consolidation policy.

Most users call ``Memory.consolidate(model, method=...)`` or ``memedit consolidate``.
"""

from .consolidate import ConsolidationReport, EditOutcome, apply_consolidated, consolidate, revert
from .deltas import WeightJournal
from .policy import ConsolidationPolicy, as_policy, nothing_matched, select
from .settings import EditorSettings, default_settings
from .stats import CovarianceStats, key_covariance

__all__ = ["ConsolidationPolicy", "ConsolidationReport", "CovarianceStats", "EditOutcome", "EditorSettings", "WeightJournal",
           "apply_consolidated", "as_policy", "consolidate", "default_settings", "key_covariance", "nothing_matched", "revert",
           "select"]
