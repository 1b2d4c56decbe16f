"""OpenAI's wire format as ``memedit serve`` speaks it: the chat request, the replies and
stream chunks, and the error body ``{"error": {"message", "type", "param", "code"}}``.

memedit's own part of a reply is one extra top-level field, ``memedit``, which the OpenAI
SDK keeps (``response.model_extra["memedit"]``): the router, the route, the ids of the
edits applied, the namespace and the timing (milliseconds queued for the model, generating, and memedit's
own overhead).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
               422: "invalid_request_error", 501: "not_implemented_error"}


class ApiError(HTTPException):
    """An error answered as OpenAI's error body; ``param`` names the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(status_code=status, detail=message)
        self.param, self.code = param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(BaseModel):
    """The fields memedit reads; any other OpenAI field (temperature, ...) is accepted and
    ignored (decoding is greedy). ``router`` is memedit's own: which router answers."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    router: str | None = None

    def conversation(self) -> tuple[str, list[dict[str, str]]]:
        """The question (the last message, the user's) and the turns before it."""
        last = self.messages[-1]
        if last.role != "user" or not last.text.strip():
            raise ApiError(422, f"messages[{len(self.messages) - 1}]: the last message must be the user's question, "
                                f"with text content", param=f"messages.{len(self.messages) - 1}")
        history = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in self.messages[:-1]]
        return last.text, history

    def stops(self) -> tuple[str, ...] | None:
        if self.stop is None:
            return None
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def completion(cid: str, model: str, text: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` reply."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}],
            "memedit": meta}


def chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None = None, meta: dict[str, Any] | None = None) -> str:
    """One ``chat.completion.chunk`` as a server-sent event."""
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    if meta is not None:
        body["memedit"] = meta
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


def models_list(name: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "memedit"}]}
