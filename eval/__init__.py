"""The evaluator: dataset loaders, metrics, the runner and reports.

Planned (see DESIGN.md); not implemented yet.
"""
