"""Editors that write edits into a model's weights (ROME, MEMIT).

Planned (see DESIGN.md): activation tracing, key covariance statistics, the
rank-one and batched updates, and journaled weight deltas. Not implemented yet.
"""
