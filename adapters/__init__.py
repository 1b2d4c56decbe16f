"""Adapters to the outside world: the LangChain plugin (``langchain``), the LangGraph store
(``langgraph``) and the OpenAI-compatible server of ``memedit serve`` (``server``, with
``openai_wire`` and ``worker``). Each needs its extra: ``memedit[langchain]``,
``memedit[langgraph]``, ``memedit[serve]``."""
