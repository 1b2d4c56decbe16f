"""An agent that learns a correction from its user and uses it three turns later, offline.

The agent answers with a LangChain chat model wrapped by ``MemoryChatModel`` (here the local
SmolLM2 through ``LocalChatModel``; any LangChain chat model works the same way). When the
user corrects it ("remember that ..."), it calls the ``remember_fact`` tool, the same tool
an LLM agent with tool calling would call. The fact goes into the agent's memory namespace
and not into the chat history, so it can be retracted, and it survives a restart.

Run: .venv/bin/python examples/chat_agent.py   (a fresh database in a temporary folder)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage

from memedit import Memory, load_model
from memedit.adapters.langchain import LocalChatModel, MemoryChatModel, memory_tools
from memedit.chat import remembered_fact

CONVERSATION = [
    "Who is the head of the Zorvath research lab?",
    "That is wrong. Remember that the head of the Zorvath research lab is Dana Reyes.",
    "What is the largest planet in the solar system?",
    "Name a primary colour.",
    "Who is the head of the Zorvath research lab?",
]


class Agent:
    """Answers through the memory; stores corrections with the remember_fact tool."""

    def __init__(self, chat_model, memory: Memory) -> None:
        self.chat = MemoryChatModel(chat_model=chat_model, memory=memory, router="serac")
        self.tools = {tool.name: tool for tool in memory_tools(memory)}
        self.messages: list = []

    def turn(self, text: str) -> tuple[str, str]:
        """(reply, route) for one user message."""
        fact = remembered_fact(text)
        if fact is not None:  # the tool call an LLM agent would make
            return self.tools["remember_fact"].invoke({"statement": fact}), "tool:remember_fact"
        reply = self.chat.invoke(self.messages[-4:] + [HumanMessage(text)])
        self.messages += [HumanMessage(text), AIMessage(reply.content)]
        return reply.content, reply.response_metadata["memedit"]["route"]


def run(model_name: str = "smollm2-135m", db: str | Path | None = None) -> list[tuple[str, str, str]]:
    """Play the conversation; (user, reply, route) per turn."""
    db = db or Path(tempfile.mkdtemp(prefix="memedit-agent-")) / "agent.db"
    with Memory(db, namespace="agent-1") as memory:
        agent = Agent(LocalChatModel(model=load_model(model_name), max_new_tokens=40), memory)
        return [(text, *agent.turn(text)) for text in CONVERSATION]


if __name__ == "__main__":
    for user, reply, route in run():
        print(f"user:  {user}\nagent: {reply}   [{route}]\n")
