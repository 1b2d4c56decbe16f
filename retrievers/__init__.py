"""Routers that decide per question whether and how a stored edit applies.

Planned modules (see DESIGN.md): ``ike``, ``serac``, ``mello``, ``pokemqa``, ``grace``.
Nothing is implemented here yet; importing this package only reserves the name
``memedit.retrievers``.
"""
