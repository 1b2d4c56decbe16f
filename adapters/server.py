"""``memedit serve``: an OpenAI-compatible HTTP API over one model and one memory.

``create_app(memory, model)`` builds the FastAPI app. Every request carries a bearer key
bound to one namespace (:mod:`memedit.keys`); the namespace comes from the key alone, so
a request never reaches another namespace. Routes:

- ``POST /v1/chat/completions`` (streaming or not): answered through an ``EditedModel``
  with the router the body names (``"router"``) or the server's default; the reply's
  extra ``memedit`` field holds the route, the applied edit ids and the timing.
- ``GET /v1/models``.
- ``POST /v1/edits`` (one edit object, or ``{"edits": [...]}`` in one transaction),
  ``GET /v1/edits`` (list; ``?q=`` searches), ``GET /v1/edits/{id}``,
  ``DELETE /v1/edits/{id}`` (retract), ``GET /v1/edits/{id}/history``, ``GET /v1/history``.
- ``POST /v1/edits:consolidate``: only when the model is local (else 501).

Answers run one at a time on the model's worker (:mod:`.worker`); a question that must wait
for it is decided ahead on another thread (``_Service.warm``), so its turn reads caches.

Install with ``pip install "memedit[serve]"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any, Literal

from fastapi import Body, Depends, FastAPI, Header, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from memedit.edit import Edit
from memedit.edited_model import PROMPT_ROUTERS, ROUTERS, EditedModel, router_class
from memedit.errors import ConflictError, EditError, EditNotFound, MemeditError
from memedit.keys import KeyRing
from memedit.memory import Memory
from memedit.retrievers.detector import EditScope, ScopeDetector
from memedit.store import STATUSES

from .openai_wire import DONE, ApiError, ChatRequest, chunk, completion, completion_id, error_body, event, models_list
from .worker import ModelWorker

log = logging.getLogger("memedit.serve")
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_EDITS_PER_REQUEST = 1_000
MAX_LIST = 1_000


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 (by its Content-Length,
    or while it is read when it has none)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await JSONResponse(self._error(), status_code=413)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, self._error()["error"]["message"], code="request_too_large")
            return message

        await self.app(scope, limited, send)

    def _error(self) -> dict[str, Any]:
        return error_body(413, f"the request body is over the limit of {self.limit:,} bytes; send less at once "
                               f"(many edits can go in several requests)", code="request_too_large")


def _is_local(model: Any) -> bool:
    return hasattr(model, "model") and hasattr(model, "tokenizer")


class _Service:
    """What the routes share: the memory, the model's worker, the keys and the routers."""

    def __init__(self, memory: Memory, model: Any, router: str, model_name: str, keys: KeyRing,
                 max_tokens: int, max_tokens_limit: int, warm: bool = True) -> None:
        self.memory, self.model, self.keys = memory, model, keys
        self.warm_ahead = warm
        self.local = _is_local(model)
        self.routers = ROUTERS if self.local else PROMPT_ROUTERS
        if router not in self.routers:
            raise ValueError(f"router must be one of {', '.join(self.routers)} for this model, got {router!r}")
        self.router, self.model_name = router, model_name
        self.max_tokens, self.max_tokens_limit = max_tokens, max_tokens_limit
        self.worker = ModelWorker(model)
        self._views: dict[str, Memory] = {}
        self._edited: dict[tuple[str, str], EditedModel] = {}
        self._ahead: dict[str, ScopeDetector] = {}  # per namespace, for deciding questions ahead (warm)
        self._scope: EditScope | None = None
        self._made = threading.RLock()  # views, detectors and the classifier are made once, from any thread

    def view(self, namespace: str) -> Memory:
        with self._made:
            if namespace not in self._views:
                self._views[namespace] = self.memory.with_namespace(namespace)
            return self._views[namespace]

    def scope(self) -> EditScope:
        """The edit classifier that every namespace's SERAC and IKE share, with the detectors
        that decide ahead: its caches hold only what texts give (vectors, check scores), so a
        question decided ahead finds them whichever detector decides it on its turn."""
        with self._made:
            if self._scope is None:
                self._scope = EditScope(self.memory.embedder)
            return self._scope

    def edited(self, namespace: str, router: str) -> EditedModel:
        """The namespace's EditedModel for ``router`` (made on first use; call on the worker)."""
        journal = getattr(self.model, "_weight_journal", None)
        if journal is not None and journal.applied and journal.owner != (self.memory.path, namespace):
            raise ConflictError(f"this server's model carries the consolidated edits of another namespace; it cannot answer "
                                f"namespace {namespace!r} (serve that namespace from its own server)")
        if (namespace, router) not in self._edited:
            shared = {"scope": self.scope()} if router_class(router).decides_question else {}
            self._edited[namespace, router] = EditedModel(self.model, self.view(namespace), router=router, stop=(),
                                                          max_new_tokens=self.max_tokens, **shared)
        return self._edited[namespace, router]

    def warm(self, namespace: str, router: str, question: str) -> None:
        """While the model is busy with other requests, decide this question ahead on another
        thread (``ScopeDetector.warm``, with the namespace's own detector over the shared
        classifier): its vectors and check scores are cached, so its turn on the model runs no
        encoder. Only for the routers whose first step is that decision (SERAC, IKE); not when
        the model is free (the answer starts at once); a failure only loses the head start."""
        if not (self.warm_ahead and self.worker.busy and router_class(router).decides_question):
            return

        def warm() -> None:
            try:
                self.ahead(namespace).warm(question)
            except Exception:  # the answer computes what is missing itself
                log.warning("deciding a question ahead failed; its turn decides it", exc_info=True)

        asyncio.get_running_loop().run_in_executor(None, warm)

    def ahead(self, namespace: str) -> ScopeDetector:
        """The namespace's detector for deciding questions ahead (the routers' k, the shared classifier)."""
        with self._made:
            if namespace not in self._ahead:
                self._ahead[namespace] = ScopeDetector(self.view(namespace), self.scope())
            return self._ahead[namespace]

    def prepared(self, body: ChatRequest) -> tuple[str, int, tuple[str, ...]]:
        """Check a chat request: the model, the router and the budget."""
        if body.model != self.model_name:
            raise ApiError(404, f"model {body.model!r} is not served here; this server serves {self.model_name!r} "
                                f"(GET /v1/models)", param="model", code="model_not_found")
        router = body.router or self.router
        if router not in self.routers:
            raise ApiError(422, f"router: unknown router {router!r}; choose one of {', '.join(self.routers)}", param="router")
        budget = body.max_completion_tokens or body.max_tokens or self.max_tokens
        if budget > self.max_tokens_limit:
            raise ApiError(422, f"max_tokens: {budget} is over this server's limit of {self.max_tokens_limit}", param="max_tokens")
        return router, budget, body.stops() or ()

    def configure(self, namespace: str, router: str, budget: int, stop: tuple[str, ...]) -> EditedModel:
        edited = self.edited(namespace, router)
        edited.router.max_new_tokens, edited.router.stop = budget, stop  # safe: only the worker uses it
        return edited


def _meta(namespace: str, router: str, route: str, edits: list[Any], timing: Any, started: float) -> dict[str, Any]:
    total = time.perf_counter() - started
    return {"namespace": namespace, "router": router, "route": route, "edits": [e.id for e in edits],
            "timing": {"queued_ms": round(timing.queued * 1000, 3), "generation_ms": round(timing.generation * 1000, 3),
                       "resumed_ms": round(timing.resumed * 1000, 3),
                       "overhead_ms": round((total - timing.queued - timing.generation - timing.resumed) * 1000, 3)}}


def _validation_response(error: RequestValidationError) -> JSONResponse:
    problems = error.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        detail = next(p for p in problems if p.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "JSON decode error")
        return JSONResponse(error_body(400, f"the body is not valid JSON ({reason}); send a JSON object",
                                       code="invalid_json"), status_code=400)
    if any(tuple(p.get("loc", ())) == ("body",) and isinstance(p.get("input"), (str, bytes)) for p in problems):
        return JSONResponse(error_body(422, "body: must be a JSON object, sent with 'Content-Type: application/json'",
                                       param="body"), status_code=422)
    names = [".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path", "header")) or "body"
             for item in problems]
    message = "; ".join(f"{name}: {item.get('msg')}" for name, item in zip(names, problems))
    return JSONResponse(error_body(422, message, param=names[0] if names else None), status_code=422)


def _install_errors(app: FastAPI) -> None:
    def respond(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param, code), status_code=status,
                            headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return respond(error.status_code, error.detail, error.param, error.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error: StarletteHTTPException):
        return respond(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error: RequestValidationError):
        return _validation_response(error)

    @app.exception_handler(EditError)
    async def bad_edit(request, error: EditError):
        return respond(422, str(error), param=getattr(error, "param", error.field))

    @app.exception_handler(EditNotFound)
    async def not_found(request, error: EditNotFound):
        return respond(404, str(error), code="not_found")

    @app.exception_handler(ConflictError)
    async def conflict(request, error: ConflictError):
        return respond(409, str(error), code="conflict")

    @app.exception_handler(MemeditError)
    async def memedit_error(request, error: MemeditError):
        return respond(422, str(error))

    @app.exception_handler(ValueError)
    async def bad_value(request, error: ValueError):
        return respond(422, str(error))

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return respond(500, f"internal error ({type(error).__name__}); the server keeps running and nothing stored was lost")


def _edits_of(payload: Any) -> tuple[list[Edit], bool]:
    """The edits of a POST /v1/edits body, checked; and whether it was a list."""
    many = isinstance(payload, dict) and set(payload) == {"edits"}
    records = payload["edits"] if many else [payload]
    if not isinstance(records, list) or not records or len(records) > MAX_EDITS_PER_REQUEST:
        raise ApiError(422, f"edits: must be a list of 1 to {MAX_EDITS_PER_REQUEST:,} edit objects", param="edits")
    edits = []
    for i, record in enumerate(records):
        where = f"edits.{i}" if many else None
        if isinstance(record, (str, bytes)) and not many:
            raise ApiError(422, "body: must be a JSON object, sent with 'Content-Type: application/json'", param="body")
        if not isinstance(record, dict):
            raise ApiError(422, f"{where or 'body'}: must be an edit object (e.g. {{\"statement\": \"...\"}}) "
                                f"or {{\"edits\": [...]}}", param=where or "body")
        try:
            edits.append(Edit.from_dict(record))
        except EditError as err:
            err.param = f"{where}.{err.field}" if where else err.field
            raise
        except TypeError as err:
            raise ApiError(422, f"{where or 'body'}: {err}", param=where or "body") from None
    return edits, many


def create_app(memory: Memory, model: Any, router: str = "serac", model_name: str | None = None,
               keys: KeyRing | None = None, max_tokens: int = 96, max_tokens_limit: int = 2048,
               max_body_bytes: int = MAX_BODY_BYTES, warm: bool = True) -> FastAPI:
    """The FastAPI app serving ``model`` (a local ``LanguageModel`` or a black-box backend such
    as ``LangChainBackend``) through ``memory``'s database. ``router`` is the default router;
    ``model_name`` the id clients send (default: the model's name); ``keys`` the key ring
    (default: the memory database's); ``max_tokens`` the default answer budget; ``warm``
    whether a question that must wait for the model is decided ahead on another thread
    while it waits (``_Service.warm``), so that its turn on the model only reads caches."""
    service = _Service(memory, model, router, model_name or getattr(model, "name", "memedit"), keys or KeyRing(memory.path),
                       max_tokens, max_tokens_limit, warm)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.worker.close()

    app = FastAPI(title="memedit", summary="OpenAI-compatible chat completions through a memory of edits", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.state.service = service
    _install_errors(app)

    async def namespace_of(authorization: str | None = Header(None)) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer key: send 'Authorization: Bearer mk-...' (make one with `memedit keys create`)",
                           code="missing_api_key")
        namespace = service.keys.namespace_for(token.strip())
        if namespace is None:
            raise ApiError(401, "unknown or revoked key; `memedit keys list` shows the live ones", code="invalid_api_key")
        return namespace

    @app.get("/v1/models")
    async def models(namespace: str = Depends(namespace_of)) -> dict[str, Any]:
        return models_list(service.model_name)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, namespace: str = Depends(namespace_of)):
        started = time.perf_counter()
        router, budget, stop = service.prepared(body)
        question, history = body.conversation()
        service.warm(namespace, router, question)
        cid = completion_id()
        if not body.stream:
            answer, timing = await service.worker.run(
                lambda: service.configure(namespace, router, budget, stop).ask(question, history))
            meta = _meta(namespace, router, answer.route, answer.edits_used, timing, started)
            return completion(cid, service.model_name, answer.text, meta)

        def pieces():
            stream = service.configure(namespace, router, budget, stop).stream(question, history)
            yield from stream
            return stream

        events = service.worker.stream(pieces)
        first_kind, first = await anext(events)
        if first_kind == "error":
            raise first

        async def sse():
            kind, value = first_kind, first
            try:
                yield chunk(cid, service.model_name, {"role": "assistant", "content": ""})
                while kind == "piece":
                    yield chunk(cid, service.model_name, {"content": value})
                    kind, value = await anext(events)
                if kind == "error":
                    log.error("stream failed: %r", value)
                    yield event(error_body(422 if isinstance(value, MemeditError) else 500, str(value)))
                    return
                stream, timing = value
                meta = _meta(namespace, router, stream.route, stream.edits_used, timing, started)
                yield chunk(cid, service.model_name, {}, finish="stop", meta=meta)
                yield DONE
            finally:
                await events.aclose()

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/edits")
    def add_edits(payload: Any = Body(...), namespace: str = Depends(namespace_of)) -> dict[str, Any]:
        edits, many = _edits_of(payload)
        stored = service.view(namespace).add_many(edits)
        if many:
            return {"object": "list", "data": [e.to_dict() for e in stored]}
        return stored[0].to_dict()

    @app.get("/v1/edits")
    def list_edits(namespace: str = Depends(namespace_of), q: str | None = Query(None, min_length=1, max_length=2_000),
                   k: int = Query(5, ge=1, le=100), status: Literal[(*STATUSES, "all")] = "active",
                   kind: Literal["insert", "modify", "erase"] | None = None, subject: str | None = None,
                   source: str | None = None, limit: int = Query(100, ge=1, le=MAX_LIST), offset: int = Query(0, ge=0)):
        view = service.view(namespace)
        if q is not None:
            return {"object": "list", "data": [{"score": h.score, **h.edit.to_dict()} for h in view.search(q, k=k)]}
        edits = view.list(status=None if status == "all" else status, kind=kind, subject=subject, source=source,
                          limit=limit, offset=offset)
        return {"object": "list", "data": [e.to_dict() for e in edits]}

    @app.get("/v1/edits/{edit_id}")
    def get_edit(edit_id: str, namespace: str = Depends(namespace_of)) -> dict[str, Any]:
        return service.view(namespace).get(edit_id).to_dict()

    @app.delete("/v1/edits/{edit_id}")
    def retract_edit(edit_id: str, namespace: str = Depends(namespace_of),
                     reason: str | None = Query(None, max_length=1_000)) -> dict[str, Any]:
        return service.view(namespace).retract(edit_id, reason=reason).to_dict()

    @app.get("/v1/edits/{edit_id}/history")
    def edit_history(edit_id: str, namespace: str = Depends(namespace_of)) -> dict[str, Any]:
        return {"object": "list", "data": [e.to_dict() for e in service.view(namespace).history(edit_id)]}

    @app.get("/v1/history")
    def history(namespace: str = Depends(namespace_of), limit: int = Query(100, ge=1, le=MAX_LIST)) -> dict[str, Any]:
        return {"object": "list", "data": [e.to_dict() for e in service.view(namespace).history(limit=limit)]}

    @app.post("/v1/edits:consolidate")
    async def consolidate(namespace: str = Depends(namespace_of), payload: dict[str, Any] = Body(default_factory=dict)):
        if not service.local:
            raise ApiError(501, f"consolidation writes edits into a local model's weights; this server answers through "
                                f"{service.model_name!r}, a black-box model (start it with --model instead of --upstream)",
                           code="consolidation_unavailable")
        method = payload.get("method", "memit")
        if method not in ("memit", "rome"):
            raise ApiError(422, f"method: must be 'memit' or 'rome', got {method!r}", param="method")
        edits = payload.get("edits")
        if edits is not None and (not isinstance(edits, list) or not all(isinstance(e, str) for e in edits)):
            raise ApiError(422, "edits: must be a list of edit ids (or left out for every active triple edit)", param="edits")
        verify = payload.get("verify", True)
        if not isinstance(verify, bool):
            raise ApiError(422, "verify: must be true or false", param="verify")
        view = service.view(namespace)
        report, _ = await service.worker.run(lambda: view.consolidate(service.model, method=method, edits=edits, verify=verify))
        return report.to_dict()

    return app
