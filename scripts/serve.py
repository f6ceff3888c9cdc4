"""Serve a trained XiaoXin checkpoint over an OpenAI-compatible HTTP API, with a web chat page.

    python scripts/serve.py                                   # latest stage in out/, http://127.0.0.1:8000/
    python scripts/serve.py --model small --save_dir out --stage distill --port 8080

    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "xiaoxin", "messages": [{"role": "user", "content": "你好"}], "temperature": 0}'

Endpoints: POST /v1/chat/completions (with or without "stream": true; server-sent
`chat.completion.chunk` events ending in `data: [DONE]`), GET /v1/models, and the chat
page at /. Any "model" name is accepted and echoed back. Honoured fields: messages,
stream, stream_options.include_usage, max_completion_tokens (or max_tokens), temperature,
top_p, seed, and the common extensions top_k and repetition_penalty; defaults come from
Config.GENERATION. Other OpenAI fields (stop, tools, logprobs, …) are ignored; n must be 1.
History that does not fit the model's context is dropped oldest-first; a newest message
that cannot fit alone is a 400. A reasoning model's (a stage with reasoning=True in
Config.STAGES, e.g. distill) <think> part comes back apart, as
`reasoning_content` (also in streamed deltas), and its answer as `content`, however many tags it emits.

One reply is generated at a time, on a worker thread, so the event loop keeps accepting
requests and answering /v1/models while a reply is being written; a client that leaves, streamed
or not, stops its generation at the next token (or before it starts, while queued).

Access: the server binds 127.0.0.1 unless --host says otherwise. With --api_key KEY (or the
XIAOXIN_API_KEY environment variable) every /v1 request needs `Authorization: Bearer KEY`, as
OpenAI's API does (401 without it; the chat page asks for the key). Requests whose Host header is
not an allowed name are refused (400): bound to loopback, only localhost, 127.0.0.1 and [::1],
which stops DNS-rebinding pages; --allowed_hosts adds names. A browser request from another
origin (another site, or another port) to /v1 is refused (403) unless --cors_origin allows it.

Limits, checked before any tokenizing: a body over --max_request_bytes is a 413, more than
--max_messages messages a 400; sampling values that would overflow (temperature between 0 and
0.001, repetition_penalty outside 0.01–100) and JSON nested too deeply are 400s.
"""
import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import os
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import uvicorn  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.datastructures import Headers  # noqa: E402
from starlette.requests import ClientDisconnect, Request  # noqa: E402
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse  # noqa: E402
from starlette.routing import Mount, Route  # noqa: E402
from starlette.staticfiles import StaticFiles  # noqa: E402

import Config  # noqa: E402
from dataset import render_chat  # noqa: E402
from checkpoint import UserError, run_cli  # noqa: E402
from eval_model import TAGS, Chat, PromptTooLong, add_checkpoint_args, held_tag_start, open_chat  # noqa: E402

WEB_DIR = Path(__file__).resolve().parent / "web"
THINK_OPEN, THINK_CLOSE, ANSWER_OPEN = "<think>", "</think>", "<answer>"   # of eval_model.TAGS

# Request limits (flags override the first two). A body is read only up to the limit; a larger
# one is read on and thrown away up to DRAIN_BYTES so that an ordinary client, which sends its
# whole body before reading the reply, gets the 413 rather than a reset connection.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_MESSAGES = 1000
DRAIN_BYTES = 128 * 1024 * 1024
# Sampling values that fp32 logits survive: logits / temperature and the repetition penalty's
# product or quotient overflow to inf (and softmax to nan) near 1e-38.
MIN_TEMPERATURE = 1e-3
REPETITION_PENALTY_RANGE = (0.01, 100.0)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
API_KEY_ENV = "XIAOXIN_API_KEY"


# ---------------------------------------------------------------- request schema

class RequestError(Exception):
    """A request the client can fix: answered with a 4xx and an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str

    @field_validator("role")
    @classmethod
    def known_role(cls, role):
        if role not in ("system", "developer", "user", "assistant"):
            raise ValueError(f"role {role!r} is not supported; use system, user or assistant")
        return "system" if role == "developer" else role   # OpenAI's newer name for system

    @field_validator("content", mode="before")
    @classmethod
    def text_content(cls, content):
        """A string, or OpenAI's list of text parts (joined); null only makes sense as empty."""
        if content is None:
            return ""
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ValueError('must be a string or a list of {"type": "text", "text": ...} parts; '
                                 "this model reads text only")
            return "".join(p["text"] for p in content)
        return content


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat completion request that this server honours."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)        # the older name; max_completion_tokens wins
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    seed: int | None = Field(None, ge=-2**63, lt=2**64)   # what torch.Generator.manual_seed takes
    n: int | None = None

    @field_validator("temperature")
    @classmethod
    def not_tiny_temperature(cls, t):
        if t is not None and 0 < t < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}; smaller values overflow")
        return t

    @field_validator("repetition_penalty")
    @classmethod
    def sane_penalty(cls, p):
        low, high = REPETITION_PENALTY_RANGE
        if p is not None and not low <= p <= high:
            raise ValueError(f"must be between {low:g} and {high:g} (1 = no penalty)")
        return p

    @field_validator("n")
    @classmethod
    def one_choice(cls, n):
        if n not in (None, 1):
            raise ValueError("only n=1 is supported")
        return n

    def sampling(self) -> dict:
        g = Config.GENERATION
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return dict(max_new_tokens=pick(self.max_completion_tokens, pick(self.max_tokens, g["max_new_tokens"])),
                    temperature=pick(self.temperature, g["temperature"]), top_p=pick(self.top_p, g["top_p"]),
                    top_k=pick(self.top_k, g["top_k"]),
                    repetition_penalty=pick(self.repetition_penalty, g["repetition_penalty"]), seed=self.seed)


def parse_request(body: bytes, max_messages: int = MAX_MESSAGES) -> ChatRequest:
    try:
        data = json.loads(body)
    except RecursionError:
        raise RequestError("The request body is JSON nested too deeply; send a flat JSON object.") from None
    except (ValueError, UnicodeDecodeError) as e:   # JSONDecodeError, and ints over Python's digit limit
        raise RequestError(f"The request body is not valid JSON ({e}); send a JSON object.") from None
    messages = data.get("messages") if isinstance(data, dict) else None
    if isinstance(messages, list) and len(messages) > max_messages:
        raise RequestError(f"messages holds {len(messages)} messages; this server takes at most {max_messages} "
                           f"(--max_messages). Send the recent history only.", param="messages")
    try:
        request = ChatRequest.model_validate(data)
    except RecursionError:
        raise RequestError("The request body is JSON nested too deeply; send a flat JSON object.") from None
    except ValidationError as e:
        first = e.errors()[0]
        if not first["loc"]:
            raise RequestError("The request body must be a JSON object with a messages list.") from None
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise RequestError(f"Invalid field {where}: {message}.", param=where) from None
    if request.messages[-1].role != "user":
        raise RequestError("The last message must come from the user; this server does not continue "
                           "an assistant message.", param="messages")
    return request


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 past `limit` bytes without keeping more than that."""
    header = request.headers.get("content-length", "")
    declared = int(header) if header.isdigit() else 0
    too_big = declared > limit
    if declared > DRAIN_BYTES:       # not worth reading: answer now and let the connection close
        raise RequestError(f"The request body is {declared} bytes; this server takes at most {limit} "
                           f"(--max_request_bytes).", status=413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                too_big, chunks = True, []
            if not too_big:
                chunks.append(chunk)
            elif size > DRAIN_BYTES:
                break
    except ClientDisconnect:
        raise RequestError("The client closed the connection while sending the request.") from None
    if too_big:
        raise RequestError(f"The request body is {'at least ' if size > DRAIN_BYTES else ''}{max(size, declared)} "
                           f"bytes; this server takes at most {limit} (--max_request_bytes).", status=413)
    return b"".join(chunks)


def prompt_ids(chat: Chat, messages: list[dict], max_new_tokens: int) -> list[int]:
    """Chat.prompt_ids (oldest history dropped, linear in what is kept), but a newest message that
    does not fit alone is an error instead of being cut from the front."""
    try:
        kept = chat.kept_messages(messages, max_new_tokens)
    except PromptTooLong as e:
        with_system = " with the system prompt" if messages[0]["role"] == "system" else ""
        takes = f"{e.tokens}" if e.exact else f"at least {e.tokens}"
        raise RequestError(f"The newest message{with_system} takes {takes} tokens but only {e.budget} fit in "
                           f"this model's {chat.max_len}-token context next to max_tokens={max_new_tokens}; "
                           f"shorten it or lower max_tokens.", param="messages") from None
    ids = chat.tok.encode(render_chat(kept, add_generation_prompt=True)[0])
    return ids[-chat.prompt_budget(max_new_tokens):]


# ---------------------------------------------------------------- generation

class Stats:
    """What one generation used and why it stopped, filled in as it runs."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens, self.completion_tokens, self.finish_reason = prompt_tokens, 0, "length"

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class Engine:
    """Runs one generation at a time on a single worker thread (the queue is the executor's),
    handing text pieces to the event loop as they are decoded."""

    _END = object()

    def __init__(self, chat: Chat):
        self.chat = chat
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xiaoxin-generate")
        self.closing = threading.Event()

    async def pieces(self, ids: list[int], stats: Stats, sampling: dict, cancelled: threading.Event | None = None):
        """The reply's text pieces. Setting `cancelled` (or closing this generator) stops the
        generation at the next token, or before it starts if it is still queued."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        closed = threading.Event()

        def put(item):
            with contextlib.suppress(RuntimeError):     # the loop is gone: the server stopped
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def stopped():
            return closed.is_set() or self.closing.is_set() or (cancelled is not None and cancelled.is_set())

        def work():
            try:
                if not stopped():                       # the client may have left while queued
                    for piece in self.chat.stream_ids(ids, stats=stats, stopped=stopped, **sampling):
                        put(piece)
            except Exception as e:  # handed to the request, which answers with an error
                put(e)
            finally:
                put(self._END)

        self.worker.submit(work)
        try:
            while (item := await queue.get()) is not self._END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            closed.set()   # a client that disconnects stops its generation at the next token

    def close(self):
        self.closing.set()
        self.worker.shutdown(wait=False, cancel_futures=True)


class ReasoningSplitter:
    """Turns a streamed '<think>…</think><answer>…</answer>' reply into ("reasoning_content", text)
    and ("content", text) deltas: each part stripped, as splitting the whole text would
    (tests/test_serve.py holds that reference). A reply that opens with <think> is reasoning until
    its first </think> or <answer>, then answer; every tag is dropped, so repeated tags (small models
    emit them) never open a second part, as eval_model.ThinkPrinter shows one header of each. A reply
    that does not open with <think> is all answer (the whole-text split would also drop any text
    before a later <think>, which a stream has already sent)."""

    def __init__(self):
        self.field = None          # None until the first non-space text decides
        self.pending = ""          # text that may be the start of a tag
        self.started = {"reasoning_content": False, "content": False}
        self.held_space = {"reasoning_content": "", "content": ""}

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.pending += piece
        deltas = []
        if self.field is None:
            self.pending = self.pending.lstrip()
            if self.pending.startswith(THINK_OPEN):
                self.field, self.pending = "reasoning_content", self.pending[len(THINK_OPEN):]
            elif not self.pending or THINK_OPEN.startswith(self.pending):
                return deltas
            else:
                self.field = "content"
        while found := [(self.pending.find(tag), tag) for tag in TAGS if tag in self.pending]:
            at, tag = min(found)
            self._emit(deltas, self.pending[:at])
            self.pending = self.pending[at + len(tag):]
            if tag in (THINK_CLOSE, ANSWER_OPEN):
                self.field = "content"
        keep = held_tag_start(self.pending)
        self._emit(deltas, self.pending[:len(self.pending) - keep])
        self.pending = self.pending[len(self.pending) - keep:]
        return deltas

    def finish(self) -> list[tuple[str, str]]:
        deltas = []
        if self.field is None:
            self.field = "content"
        self._emit(deltas, self.pending)   # an unfinished tag is plain text
        self.pending = ""
        return deltas

    def _emit(self, deltas, text):
        """Append text to the current part, never sending its leading or (yet) trailing space."""
        field = self.field
        if not self.started[field]:
            text = text.lstrip()
            self.started[field] = bool(text)
        text = self.held_space[field] + text
        body = text.rstrip()
        self.held_space[field] = text[len(body):]
        if body:
            deltas.append((field, body))


# ---------------------------------------------------------------- the app

def error_response(message: str, status: int, param: str | None = None,
                   kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


def create_app(chat: Chat, model_name: str, *, api_key: str | None = None,
               allowed_hosts=LOOPBACK_NAMES, cors_origins=(), max_request_bytes: int = MAX_REQUEST_BYTES,
               max_messages: int = MAX_MESSAGES):
    """The ASGI app: the OpenAI-compatible API under /v1 and the chat page at /, behind the access
    checks of AccessGuard (allowed_hosts may hold "*" for any host, cors_origins "*" for any origin)."""
    engine = Engine(chat)
    split = chat.reasoning

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": 0, "owned_by": "xiaoxin"}]})

    async def completions(request: Request):
        try:
            body = parse_request(await read_body(request, max_request_bytes), max_messages)
            sampling = body.sampling()
            messages = [m.model_dump() for m in body.messages]
            ids = await run_in_threadpool(prompt_ids, chat, messages, sampling["max_new_tokens"])
        except RequestError as e:
            return error_response(e.message, e.status, e.param)
        meta = dict(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model or model_name)
        stats = Stats(len(ids))
        if body.stream:
            # StreamingResponse closes the generator when the client leaves, which stops the generation.
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(sse_events(engine.pieces(ids, stats, sampling), stats, meta, split, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        # Nothing is sent until the reply is whole, so watch the connection: a client that leaves
        # frees the generation worker at the next token instead of when the reply would be done.
        left = threading.Event()
        watcher = asyncio.create_task(set_on_disconnect(request, left))
        parts = {"reasoning_content": [], "content": []}
        try:
            async with contextlib.aclosing(deltas(engine.pieces(ids, stats, sampling, left), split)) as reply:
                async for field, text in reply:
                    parts[field].append(text)
        except Exception as e:
            return error_response(f"Generation failed: {e}", 500, kind="server_error")
        finally:
            watcher.cancel()
        if left.is_set():
            return error_response("The client closed the connection before the reply was ready.", 499)
        message = {"role": "assistant", "content": "".join(parts["content"])}
        if split:
            message["reasoning_content"] = "".join(parts["reasoning_content"])
        return JSONResponse({**meta, "object": "chat.completion", "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": stats.finish_reason}],
            "usage": stats.usage()})

    async def index(request: Request):
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def http_error(request: Request, exc: HTTPException):
        hint = {404: f"There is no {request.url.path}; the API is under /v1.",
                405: f"{request.method} is not allowed on {request.url.path}."}
        return error_response(hint.get(exc.status_code, exc.detail), exc.status_code)

    async def server_error(request: Request, exc: Exception):
        return error_response(f"Internal server error: {exc}", 500, kind="server_error")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    routes = [Route("/", index), Route("/v1/models", models),
              Route("/v1/chat/completions", completions, methods=["POST"]),
              Mount("/static", StaticFiles(directory=WEB_DIR), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    return AccessGuard(app, api_key=api_key, allowed_hosts=allowed_hosts, cors_origins=cors_origins)


async def set_on_disconnect(request: Request, left: threading.Event):
    """Set `left` when the client disconnects (the body has been read, so the next ASGI message
    is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    left.set()


class AccessGuard:
    """ASGI middleware in front of the app, refusing before any work is done:

    - a Host header that is not an allowed name (400): a page on evil.example whose DNS name is
      rebound to 127.0.0.1 sends `Host: evil.example`, so it can neither post nor read replies;
    - on /v1, a browser request from another origin (403) unless cors_origins allows it, in which
      case preflights are answered and replies carry Access-Control-Allow-Origin. Browsers send
      Origin with every cross-origin fetch and form post (Sec-Fetch-Site where they omit it);
      clients that are not browsers send neither;
    - on /v1, with an api_key, a missing or wrong `Authorization: Bearer` (401), compared in
      constant time. The page and its static files need no key: they hold no secret."""

    def __init__(self, app, api_key=None, allowed_hosts=LOOPBACK_NAMES, cors_origins=()):
        self.app, self.api_key = app, api_key or None
        self.any_host = "*" in allowed_hosts
        self.allowed_hosts = {h.lower().strip("[]") for h in allowed_hosts}
        self.any_origin = "*" in cors_origins
        self.cors_origins = {o.rstrip("/").lower() for o in cors_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "").lower()
        if not self.any_host and host_name(host) not in self.allowed_hosts:
            return await error_response(f"Host {host or '(none)'!r} is not served here; start the server with "
                                        f"--allowed_hosts {host_name(host) or 'NAME'} to allow it.",
                                        400)(scope, receive, send)
        if not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        origin = headers.get("origin", "").rstrip("/").lower()
        cross = (origin not in ("", f"http://{host}", f"https://{host}") if origin else
                 headers.get("sec-fetch-site") in ("cross-site", "same-site"))
        allowed_origin = cross and origin and (self.any_origin or origin in self.cors_origins)
        if cross and not allowed_origin:
            return await error_response(f"Cross-origin requests from {origin or 'another site'} are refused; start "
                                        f"the server with --cors_origin {origin or 'ORIGIN'} to allow them.",
                                        403)(scope, receive, send)
        cors = {}
        if allowed_origin:
            cors = {"access-control-allow-origin": "*" if self.any_origin else origin, "vary": "Origin"}
            if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                return await Response(status_code=204, headers={
                    **cors, "access-control-allow-methods": "GET, POST, OPTIONS",
                    "access-control-allow-headers": "Authorization, Content-Type",
                    "access-control-max-age": "600"})(scope, receive, send)
        if self.api_key and not self.key_matches(headers.get("authorization", "")):
            response = error_response("Incorrect or missing API key: send the header "
                                      "'Authorization: Bearer <key>' with the server's --api_key.", 401,
                                      kind="invalid_request_error", code="invalid_api_key")
            response.headers["WWW-Authenticate"] = "Bearer"
            response.headers.update(cors)
            return await response(scope, receive, send)
        if not cors:
            return await self.app(scope, receive, send)

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) +
                           [(k.encode(), v.encode()) for k, v in cors.items()]}
            await send(message)
        return await self.app(scope, receive, send_with_cors)

    def key_matches(self, authorization: str) -> bool:
        scheme, _, key = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.api_key.encode())


def host_name(host: str) -> str:
    """The name in a Host header, without its port or IPv6 brackets."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


async def deltas(pieces, split: bool):
    """("content" | "reasoning_content", text) pairs from the raw text pieces. Closing this
    closes `pieces` at once, which stops the generation behind them."""
    async with contextlib.aclosing(pieces):
        if not split:
            async for piece in pieces:
                if piece:
                    yield "content", piece
            return
        splitter = ReasoningSplitter()
        async for piece in pieces:
            for delta in splitter.feed(piece):
                yield delta
        for delta in splitter.finish():
            yield delta


async def sse_events(pieces, stats: Stats, meta: dict, split: bool, include_usage: bool):
    def event(delta: dict, finish_reason=None, usage=None, choices=True) -> str:
        chunk = {**meta, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
                 if choices else []}
        if include_usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    yield event({"role": "assistant", "content": ""})
    try:
        async with contextlib.aclosing(deltas(pieces, split)) as reply:
            async for field, text in reply:
                yield event({field: text})
    except Exception as e:
        error = {"message": f"Generation failed: {e}", "type": "server_error", "param": None, "code": None}
        yield f"data: {json.dumps({'error': error}, ensure_ascii=False)}\n\n"
    else:
        yield event({}, stats.finish_reason)
        if include_usage:
            yield event({}, usage=stats.usage(), choices=False)
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------- running it

def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a busy port is one clear sentence (port 0 = any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host.") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """The app served by uvicorn on a daemon thread, for tests and notebooks:

        with BackgroundServer(create_app(chat, "xiaoxin")) as server:
            requests.get(server.url + "/v1/models")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind_socket(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served_model_name", default=None, help="the id /v1/models lists (default: xiaoxin-<stage>)")
    p.add_argument("--api_key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV}, else no key)")
    p.add_argument("--allowed_hosts", default="",
                   help="comma-separated Host names to answer besides localhost, 127.0.0.1 and [::1], or * for "
                        "any (default: loopback names when bound to loopback, any host otherwise)")
    p.add_argument("--cors_origin", action="append", default=[],
                   help="a browser origin (scheme://host:port) allowed to call /v1 from its pages; repeat for "
                        "more, * for any (default: same origin only)")
    p.add_argument("--max_request_bytes", type=int, default=MAX_REQUEST_BYTES,
                   help=f"largest request body (default {MAX_REQUEST_BYTES}); larger ones get 413")
    p.add_argument("--max_messages", type=int, default=MAX_MESSAGES,
                   help=f"most messages in one request (default {MAX_MESSAGES}); more get 400")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_cli(parse_args, serve, argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_settings(args) -> dict:
    """create_app's access keywords from the flags (and XIAOXIN_API_KEY)."""
    for flag in ("max_request_bytes", "max_messages"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} {getattr(args, flag)} must be at least 1.")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    extra = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
    if any(h != "*" and ("/" in h or h.count(":") == 1) for h in extra):
        raise UserError(f"--allowed_hosts {args.allowed_hosts!r} must list host names (no scheme, no port), "
                        f"e.g. --allowed_hosts myserver.lan,192.168.1.5.")
    if extra:
        hosts = LOOPBACK_NAMES + tuple(extra)
    else:       # bound to a public address, the server cannot know its names; warn instead
        hosts = LOOPBACK_NAMES if is_loopback(args.host) else ("*",)
    origins = tuple(o.strip() for o in args.cors_origin if o.strip())
    if any(o != "*" and "://" not in o for o in origins):
        raise UserError(f"--cors_origin values must be origins like http://localhost:3000 (or *); got {origins}.")
    return dict(api_key=api_key or None, allowed_hosts=hosts, cors_origins=origins,
                max_request_bytes=args.max_request_bytes, max_messages=args.max_messages)


def serve(args) -> int:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is out of range; use 1-65535 (or 0 for any free port).")
    access = access_settings(args)
    sock = bind_socket(args.host, args.port)
    chat, checkpoint = open_chat(args)
    name = args.served_model_name or f"xiaoxin-{chat.stage or 'model'}"
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{sock.getsockname()[1]}"
    print(f"loaded {checkpoint} (stage {chat.stage}) on {chat.device}; serving it as {name!r}", file=sys.stderr)
    print(f"chat page: {url}/   OpenAI API: {url}/v1   (Ctrl+C stops)", file=sys.stderr)
    print(f"API key: {'required' if access['api_key'] else 'none'}; hosts: {', '.join(access['allowed_hosts'])}; "
          f"cross-origin: {', '.join(access['cors_origins']) or 'refused'}", file=sys.stderr)
    if not is_loopback(args.host) and not access["api_key"]:
        print(f"note: listening on {args.host}, reachable from other machines, with no API key "
              f"(--api_key or ${API_KEY_ENV} sets one).", file=sys.stderr)
    # On Ctrl+C, replies still being written get a few seconds, then are cut off.
    uvicorn.Server(uvicorn.Config(create_app(chat, name, **access), log_level="info",
                                  timeout_graceful_shutdown=3)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
