"""Adapters to the outside world: the LangChain plugin (``langchain``) and the LangGraph store
(``langgraph``). Each needs its extra: ``memedit[langchain]``, ``memedit[langgraph]``."""
