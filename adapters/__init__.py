"""Adapters to the outside world: the LangChain plugin (``langchain``) and the
OpenAI-compatible server of ``memedit serve`` (``server``, with ``openai_wire`` and ``worker``)."""
