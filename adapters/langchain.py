"""The LangChain plugin: a retriever, agent tools and a chat model that answers through a memory.

Install with ``pip install "memedit[langchain]"``. Four pieces:

- :class:`MemoryRetriever`: a ``BaseRetriever`` over one memory namespace; each ``Document``
  is an edit's statement with the edit's fields and score in ``metadata``.
- :func:`memory_tools`: tools an agent calls to remember, forget, retract and search
  facts. Bad input and memedit errors come back to the agent as text, never as exceptions.
- :class:`MemoryChatModel`: wraps ANY LangChain chat model so that its answers go through a
  memedit router (IKE, SERAC, MeLLo or PokeMQA: the routers that work through prompts
  alone; the multi-hop ones call the wrapped model once per step and reply with the final
  answer). Out of scope,
  the wrapped model receives the caller's messages untouched; in scope, it receives the
  router's prompt with the edits quoted as data. Streaming and batching are the wrapped
  model's own.
- :class:`LangChainBackend` (a chat model as a memedit model, black box: prompts only) and
  :class:`LocalChatModel` (a local memedit model as a LangChain chat model, for offline use).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, AsyncIterator, Iterator, Sequence

from langchain_core.callbacks import CallbackManagerForLLMRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr

from memedit.checks import whole_number
from memedit.edited_model import PROMPT_ROUTERS, make_router
from memedit.errors import MemeditError
from memedit.memory import Hit, Memory
from memedit.models import (DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, Prompt, Request, VisibleText, as_prompt,
                            check_batch_size, check_request, cut_at_stop)

__all__ = ["MemoryRetriever", "memory_tools", "RememberFact", "ForgetFact", "RetractEdit", "SearchMemory",
           "MemoryChatModel", "LangChainBackend", "LocalChatModel", "CHAT_SYSTEM"]

CHAT_SYSTEM = "You are a helpful assistant."


def _check_memory(value: Any) -> Memory:
    if not isinstance(value, Memory):
        raise ValueError(f"memory must be a memedit.Memory (e.g. Memory('memedit.db', namespace='agent')), got {type(value).__name__}")
    return value


MemoryField = Annotated[Any, AfterValidator(_check_memory)]
_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


# -- messages ------------------------------------------------------------------------------
def to_langchain(pairs: Sequence[tuple[str, str]]) -> list[BaseMessage]:
    """memedit's (role, content) pairs as LangChain messages."""
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[role](content=content) for role, content in pairs]


def split_conversation(messages: Sequence[BaseMessage]) -> tuple[str | None, list[dict[str, str]]]:
    """The question (the last message, when a human wrote it) and the turns before it as
    role/content dicts. Messages a router cannot take (tool calls, tool results) give no question."""
    if not messages or messages[-1].type != "human" or not messages[-1].text.strip():
        return None, []
    history = []
    for message in messages[:-1]:
        role = _ROLES.get(message.type)
        if role is None or (role == "assistant" and getattr(message, "tool_calls", None)):
            return None, []
        history.append({"role": role, "content": message.text})
    return messages[-1].text, history


# -- a chat model as a memedit model -------------------------------------------------------
class LangChainBackend:
    """A LangChain chat model behind memedit's model interface (``chat``, ``generate``,
    ``stream``, ``generate_many``, ``plain``): a black box, so the routers that work through prompts
    alone (IKE, SERAC, MeLLo, PokeMQA) run on it. ``max_new_tokens`` is not passed on; ``stop`` cuts the text."""

    has_chat_template = True

    def __init__(self, chat_model: Any, name: str | None = None) -> None:
        if not hasattr(chat_model, "invoke") or not hasattr(chat_model, "stream"):
            raise TypeError(f"chat_model must be a LangChain chat model (with invoke and stream), got {type(chat_model).__name__}")
        self.chat_model = chat_model
        self.name = name or type(chat_model).__name__

    @staticmethod
    def plain(text: str) -> str:
        """Text as it is: a chat model takes message content as text, not as its own tokens."""
        return text

    def chat(self, messages: Sequence[dict[str, str]], cache_turns: int = 0) -> Prompt:
        pairs = tuple((m["role"], m["content"]) for m in messages)
        text = "".join(f"{role}: {content}\n" for role, content in pairs)
        return Prompt("", text, pairs)

    def _messages(self, prompt: Prompt | str) -> list[BaseMessage]:
        prompt = as_prompt(prompt)
        return to_langchain(prompt.messages) if prompt.messages else [HumanMessage(content=prompt.text)]

    def generate(self, prompt: Prompt | str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 stop: Sequence[str] = ("\n",)) -> str:
        return "".join(self.stream(prompt, max_new_tokens, stop))

    def stream(self, prompt: Prompt | str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               stop: Sequence[str] = ("\n",)) -> Iterator[str]:
        visible, text = VisibleText(stop), ""
        for chunk in self.chat_model.stream(self._messages(prompt)):
            text += chunk.text
            piece = visible.update(text)
            if piece:
                yield piece
            if visible.stopped:
                break
        rest = visible.finish()
        if rest:
            yield rest

    def generate_batch(self, prompts: Sequence[Prompt | str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                       stop: Sequence[str] = ("\n",), batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
        return self.generate_many(Request.each(prompts, max_new_tokens, stop), batch_size)

    def generate_many(self, requests: Sequence[Request], batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
        """Every request sent at once as concurrent calls, at most ``batch_size`` in flight
        (LangChain's ``batch`` with ``max_concurrency``), so a served model gets parallel
        work; each reply is cut at its request's stop strings."""
        check_batch_size(batch_size)
        requests = [check_request(r, i) for i, r in enumerate(requests)]
        replies = self.chat_model.batch([self._messages(r.prompt) for r in requests],
                                        config={"max_concurrency": batch_size})
        return [cut_at_stop(reply.text, request.stop)[0] for request, reply in zip(requests, replies)]

    def __repr__(self) -> str:
        return f"LangChainBackend({self.name!r})"


# -- a local memedit model as a chat model -------------------------------------------------
class LocalChatModel(BaseChatModel):
    """A local memedit model (``memedit.load_model(...)``) as a LangChain chat model, so the
    plugin runs offline. Greedy decoding; ``stop`` strings cut the answer."""

    model: Any
    max_new_tokens: int = 256
    model_config = ConfigDict(arbitrary_types_allowed=True)

    @property
    def _llm_type(self) -> str:
        return "memedit-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model.name, "max_new_tokens": self.max_new_tokens}

    def _prompt(self, messages: list[BaseMessage]) -> Prompt:
        turns = []
        for message in messages:
            role = _ROLES.get(message.type)
            if role is None:
                raise ValueError(f"LocalChatModel takes system, human and AI messages; got a {message.type!r} message")
            turns.append({"role": role, "content": message.text})
        return self.model.chat(turns)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        text = "".join(self._pieces(messages, stop, run_manager))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for piece in self._pieces(messages, stop, run_manager):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))

    def _pieces(self, messages: list[BaseMessage], stop: list[str] | None, run_manager) -> Iterator[str]:
        for piece in self.model.stream(self._prompt(messages), max_new_tokens=self.max_new_tokens, stop=tuple(stop or ())):
            if run_manager:
                run_manager.on_llm_new_token(piece)
            yield piece


# -- a chat model that answers through the memory ------------------------------------------
class MemoryChatModel(BaseChatModel):
    """``chat_model`` answering through ``memory`` with a memedit router.

    The last human message is the question and the messages before it are the history.
    The router decides whether edits apply: out of scope (or when the last message is not a
    human question) the wrapped model gets the caller's messages untouched; in scope it gets
    the router's prompt, where the edits are quoted as data; for an erase in scope the
    reply is the router's refusal and the wrapped model is not called. Each reply carries
    ``response_metadata["memedit"]``: the route, the ids of the edits used and the trace.
    ``router_options`` go to the router (e.g. ``{"k": 1}`` or ``{"scope": "cross-encoder"}``).
    """

    chat_model: Any
    memory: MemoryField
    router: str = "serac"
    system: str = CHAT_SYSTEM
    router_options: dict[str, Any] = Field(default_factory=dict)
    model_config = ConfigDict(arbitrary_types_allowed=True)
    _router: Any = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        if self.router not in PROMPT_ROUTERS:
            raise ValueError(f"router must be one that works through prompts alone: {', '.join(PROMPT_ROUTERS)}; got {self.router!r}")
        options = {"system": self.system, "stop": (), **self.router_options}
        self._router = make_router(self.router, LangChainBackend(self.chat_model), self.memory, **options)

    @property
    def _llm_type(self) -> str:
        return "memedit"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"router": self.router, "namespace": self.memory.namespace, "chat_model": type(self.chat_model).__name__}

    def route(self, messages: list[BaseMessage]) -> tuple[list[BaseMessage] | None, str | None, dict[str, Any]]:
        """What to do with ``messages``: (messages for the wrapped model or None, a fixed reply
        or None, the memedit metadata)."""
        question, history = split_conversation(messages)
        if question is None:
            return messages, None, {"route": "base", "edits_used": [], "trace": [{"step": "pass", "why": "the last message is not a human question"}]}
        plan = self._router.plan(question, history)
        meta = {"route": plan.route, "edits_used": [e.id for e in plan.edits_used], "trace": plan.trace}
        if plan.text is not None:
            return None, plan.text, meta
        return (messages if plan.route == "base" else to_langchain(plan.prompt.messages)), None, meta

    @staticmethod
    def _reply(message: BaseMessage | str, meta: dict[str, Any]) -> AIMessage:
        content = message if isinstance(message, str) else message.content
        extra = {} if isinstance(message, str) else dict(message.response_metadata)
        return AIMessage(content=content, response_metadata={**extra, "memedit": meta})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        send, fixed, meta = self.route(messages)
        reply = fixed if send is None else self.chat_model.invoke(send, stop=stop, **kwargs)
        return ChatResult(generations=[ChatGeneration(message=self._reply(reply, meta))])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager=None, **kwargs: Any) -> ChatResult:
        send, fixed, meta = await asyncio.to_thread(self.route, messages)
        reply = fixed if send is None else await self.chat_model.ainvoke(send, stop=stop, **kwargs)
        return ChatResult(generations=[ChatGeneration(message=self._reply(reply, meta))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        send, fixed, meta = self.route(messages)
        if send is None:
            yield ChatGenerationChunk(message=AIMessageChunk(content=fixed))
        else:
            for chunk in self.chat_model.stream(send, stop=stop, **kwargs):
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text)
                yield ChatGenerationChunk(message=AIMessageChunk(content=chunk.content))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata={"memedit": meta}))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager=None, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        send, fixed, meta = await asyncio.to_thread(self.route, messages)
        if send is None:
            yield ChatGenerationChunk(message=AIMessageChunk(content=fixed))
        else:
            async for chunk in self.chat_model.astream(send, stop=stop, **kwargs):
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text)
                yield ChatGenerationChunk(message=AIMessageChunk(content=chunk.content))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata={"memedit": meta}))

    def _routes(self, inputs: list[Any]):
        routes = [self.route(self._convert_input(i).to_messages()) for i in inputs]
        sends = [send for send, _, _ in routes if send is not None]
        return routes, sends

    def _merge(self, routes, replies) -> list[Any]:
        replies = iter(replies)
        out = []
        for send, fixed, meta in routes:
            reply = fixed if send is None else next(replies)
            out.append(reply if isinstance(reply, Exception) else self._reply(reply, meta))
        return out

    def batch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        """Route every input, then send the ones that need the wrapped model in one ``batch`` call."""
        routes, sends = self._routes(inputs)
        replies = self.chat_model.batch(sends, _one_config(config), return_exceptions=return_exceptions, **kwargs) if sends else []
        return self._merge(routes, replies)

    async def abatch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        routes, sends = await asyncio.to_thread(self._routes, inputs)
        replies = await self.chat_model.abatch(sends, _one_config(config), return_exceptions=return_exceptions, **kwargs) if sends else []
        return self._merge(routes, replies)


def _one_config(config):
    """A per-input config list cannot follow the inputs that skip the wrapped model: use the first."""
    return config[0] if isinstance(config, list) and config else config


# -- the retriever -------------------------------------------------------------------------
def hit_document(hit: Hit) -> Document:
    """A search hit as a ``Document``: the statement, with the edit's fields and score as metadata."""
    edit = hit.edit
    metadata = {"id": edit.id, "namespace": edit.namespace, "kind": edit.kind, "subject": edit.subject,
                "relation": edit.relation, "target": edit.target, "old_target": edit.old_target,
                "prompt": edit.prompt, "aliases": list(edit.aliases), "source": edit.source,
                "created_at": edit.created_at, "score": float(hit.score)}
    return Document(page_content=edit.statement, metadata=metadata, id=edit.id)


class MemoryRetriever(BaseRetriever):
    """The active edits of one memory namespace nearest to a query, as ``Document``s.
    ``k`` (also a keyword of ``invoke``) is how many; ``min_score`` drops weaker matches."""

    memory: MemoryField
    k: int = 4
    min_score: float | None = None
    model_config = ConfigDict(arbitrary_types_allowed=True)

    def model_post_init(self, context: Any) -> None:
        _check_k(self.k)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[Document]:
        hits = self.memory.search(query, k=_check_k(self.k if k is None else k))
        return [hit_document(h) for h in hits if self.min_score is None or h.score >= self.min_score]

    async def _aget_relevant_documents(self, query: str, *, run_manager, k: int | None = None) -> list[Document]:
        return await asyncio.to_thread(self._get_relevant_documents, query, run_manager=run_manager, k=k)


def _check_k(k: Any) -> int:
    return whole_number("k", k, 1)


# -- tools ---------------------------------------------------------------------------------
def _error_text(error: ToolException) -> str:
    return f"memedit could not do that: {error}"


def _validation_text(error: Exception) -> str:
    problems = []
    for item in getattr(error, "errors", lambda: [])():
        where = ".".join(str(p) for p in item.get("loc", ())) or "input"
        problems.append(f"{where}: {item.get('msg')}")
    return "memedit could not read the tool input: " + ("; ".join(problems) or str(error))


class _MemoryTool(BaseTool):
    """What the memory tools share: the memory, and errors returned to the agent as text."""

    memory: MemoryField
    handle_tool_error: Any = _error_text
    handle_validation_error: Any = _validation_text
    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _run(self, *args: Any, run_manager=None, **kwargs: Any) -> str:
        try:
            return self.act(**kwargs)
        except (MemeditError, ValueError) as error:
            raise ToolException(str(error)) from error

    def act(self, **kwargs: Any) -> str:
        raise NotImplementedError


def _fields(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class _StructuredFact(BaseModel):
    """The fields that locate a structured fact (remember_fact and forget_fact both take them)."""

    subject: str | None = Field(None, description="For a structured fact: who or what it is about, e.g. 'Alice'")
    prompt: str | None = Field(None, description="For a structured fact: a sentence start with {} for the subject, e.g. \"{}'s manager is\"")


class RememberInput(_StructuredFact):
    statement: str | None = Field(None, description="The fact as one sentence, e.g. 'Alice's manager is Bob.'")
    target: str | None = Field(None, description="For a structured fact: the answer, e.g. 'Bob'")
    old_target: str | None = Field(None, description="The answer this fact corrects, if any")


class RememberFact(_MemoryTool):
    name: str = "remember_fact"
    description: str = ("Store a fact the assistant must use from now on (a new fact, or a correction of a wrong one). "
                        "Give either statement, or subject, prompt and target. A fact about the same subject and "
                        "relation replaces the earlier one.")
    args_schema: type[BaseModel] = RememberInput

    def act(self, statement=None, subject=None, prompt=None, target=None, old_target=None) -> str:
        edit = self.memory.add(**_fields(statement=statement, subject=subject, prompt=prompt, target=target,
                                         old_target=old_target, source="langchain-tool"))
        replaced = f"; it replaces edit {edit.supersedes}" if edit.supersedes else ""
        return f"Remembered edit {edit.id} ({edit.kind}): {edit.statement}{replaced}"


class ForgetInput(_StructuredFact):
    statement: str | None = Field(None, description="The fact that must no longer be told, as one sentence")
    old_target: str | None = Field(None, description="The answer that must no longer be given, if known")


class ForgetFact(_MemoryTool):
    name: str = "forget_fact"
    description: str = ("Make the assistant stop telling a fact (an erase edit): questions about it are refused. "
                        "Give either statement, or subject and prompt.")
    args_schema: type[BaseModel] = ForgetInput

    def act(self, statement=None, subject=None, prompt=None, old_target=None) -> str:
        edit = self.memory.add(kind="erase", **_fields(statement=statement, subject=subject, prompt=prompt,
                                                       old_target=old_target, source="langchain-tool"))
        return f"Erase edit {edit.id} stored: the assistant will no longer tell {edit.statement!r}"


class RetractInput(BaseModel):
    edit_id: str = Field(description="The id of the edit to take back, as returned by remember_fact or search_memory")
    reason: str | None = Field(None, description="Why, kept in the memory's history")


class RetractEdit(_MemoryTool):
    name: str = "retract_edit"
    description: str = "Take back an edit by its id: it stops applying, and the fact it replaced (if any) applies again."
    args_schema: type[BaseModel] = RetractInput

    def act(self, edit_id, reason=None) -> str:
        edit = self.memory.retract(edit_id, reason=reason)
        return f"Retracted edit {edit.id}: {edit.statement}"


class SearchInput(BaseModel):
    query: str = Field(description="What to look for, e.g. a question or a subject")
    k: int = Field(5, ge=1, le=50, description="How many edits to return")


class SearchMemory(_MemoryTool):
    name: str = "search_memory"
    description: str = "Find the stored facts nearest to a query, with their ids and similarity scores."
    args_schema: type[BaseModel] = SearchInput

    def act(self, query, k=5) -> str:
        if not query.strip():
            raise ValueError("query is empty; give a question or a subject to look for")
        hits = self.memory.search(query, k=k)
        if not hits:
            return "The memory holds no facts in this namespace."
        return "\n".join(f"{h.edit.id} ({h.edit.kind}, score {h.score:.2f}): {h.edit.statement}" for h in hits)


def memory_tools(memory: Memory) -> list[BaseTool]:
    """The four memory tools over ``memory`` (one namespace): remember, forget, retract, search."""
    return [RememberFact(memory=memory), ForgetFact(memory=memory), RetractEdit(memory=memory), SearchMemory(memory=memory)]
