"""Adapters to the outside world: the LangChain plugin and the chatbot server.

Planned (see DESIGN.md); not implemented yet.
"""
