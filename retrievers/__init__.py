"""Routers that decide per question whether and how a stored edit applies.

``ike`` (in-context editing) and ``serac`` (scope classifier + counterfactual answer) are
built on ``base`` (retrieval, quoting edits as data, refusals, running a plan), ``demos``
(our demonstration pool) and ``scope`` (the classifiers). ``mello``, ``pokemqa`` and
``grace`` are planned (DESIGN.md). Use them through ``memedit.EditedModel``.
"""
