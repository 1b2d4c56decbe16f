"""Routers that decide per question whether and how a stored edit applies.

``ike`` (in-context editing) and ``serac`` (scope classifier + counterfactual answer) are
built on ``base`` (retrieval, quoting edits as data, refusals, running a plan), ``demos``
(our demonstration pool) and ``scope`` (the classifiers; ``scope_pairs`` and
``scope_training`` make and calibrate them). ``mello`` and ``pokemqa`` answer multi-hop
questions step by step (``multihop``, ``steps``, ``detector``, ``entities``), ``graph``
walks the memory's triples one relation at a time; ``grace``
keeps a codebook inside one layer of a local model. Use them through ``memedit.EditedModel``.
"""
