"""Adapters to the outside world: the LangChain plugin (``langchain``: a retriever, agent
tools and a chat model that answers through a memory)."""
