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
requests and answering /v1/models while a reply is being written. The server has no
authentication: it binds 127.0.0.1 unless --host says otherwise.
"""
import argparse
import asyncio
import contextlib
import json
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
from starlette.requests import Request  # noqa: E402
from starlette.responses import FileResponse, JSONResponse, StreamingResponse  # noqa: E402
from starlette.routing import Mount, Route  # noqa: E402
from starlette.staticfiles import StaticFiles  # noqa: E402

import Config  # noqa: E402
from dataset import render_chat  # noqa: E402
from checkpoint import UserError, run_cli  # noqa: E402
from eval_model import TAGS, Chat, add_checkpoint_args, held_tag_start, open_chat  # noqa: E402

WEB_DIR = Path(__file__).resolve().parent / "web"
THINK_OPEN, THINK_CLOSE, ANSWER_OPEN = "<think>", "</think>", "<answer>"   # of eval_model.TAGS


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


def parse_request(body: bytes) -> ChatRequest:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"The request body is not valid JSON ({e}); send a JSON object.") from None
    try:
        request = ChatRequest.model_validate(data)
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


def prompt_ids(chat: Chat, messages: list[dict], max_new_tokens: int) -> list[int]:
    """Chat.prompt_ids (oldest history dropped), but a newest message that does not fit alone
    is an error instead of being cut from the front."""
    ids = chat.prompt_ids(messages, max_new_tokens)
    system = messages[:1] if messages[0]["role"] == "system" else []
    alone = chat.tok.encode(render_chat(system + messages[-1:], add_generation_prompt=True)[0])
    if len(alone) > len(ids):
        with_system = " with the system prompt" if system else ""
        raise RequestError(f"The newest message{with_system} takes {len(alone)} tokens but only {len(ids)} fit in "
                           f"this model's {chat.max_len}-token context next to max_tokens={max_new_tokens}; "
                           f"shorten it or lower max_tokens.", param="messages")
    return ids


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

    async def pieces(self, ids: list[int], stats: Stats, sampling: dict):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def put(item):
            with contextlib.suppress(RuntimeError):     # the loop is gone: the server stopped
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def stopped():
            return cancelled.is_set() or self.closing.is_set()

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
            cancelled.set()   # a client that disconnects stops its generation at the next token

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
                   kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status)


def create_app(chat: Chat, model_name: str) -> Starlette:
    """The ASGI app: the OpenAI-compatible API under /v1 and the chat page at /."""
    engine = Engine(chat)
    split = chat.reasoning

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": 0, "owned_by": "xiaoxin"}]})

    async def completions(request: Request):
        try:
            body = parse_request(await request.body())
            sampling = body.sampling()
            messages = [m.model_dump() for m in body.messages]
            ids = await run_in_threadpool(prompt_ids, chat, messages, sampling["max_new_tokens"])
        except RequestError as e:
            return error_response(e.message, e.status, e.param)
        meta = dict(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model or model_name)
        stats = Stats(len(ids))
        pieces = engine.pieces(ids, stats, sampling)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(sse_events(pieces, stats, meta, split, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        parts = {"reasoning_content": [], "content": []}
        try:
            async with contextlib.aclosing(deltas(pieces, split)) as reply:
                async for field, text in reply:
                    parts[field].append(text)
        except Exception as e:
            return error_response(f"Generation failed: {e}", 500, kind="server_error")
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
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: server_error})


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
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; the API has no authentication")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served_model_name", default=None, help="the id /v1/models lists (default: xiaoxin-<stage>)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_cli(parse_args, serve, argv)


def serve(args) -> int:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is out of range; use 1-65535 (or 0 for any free port).")
    sock = bind_socket(args.host, args.port)
    chat, checkpoint = open_chat(args)
    name = args.served_model_name or f"xiaoxin-{chat.stage or 'model'}"
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{sock.getsockname()[1]}"
    print(f"loaded {checkpoint} (stage {chat.stage}) on {chat.device}; serving it as {name!r}", file=sys.stderr)
    print(f"chat page: {url}/   OpenAI API: {url}/v1   (Ctrl+C stops)", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}, reachable from other machines, with no authentication.",
              file=sys.stderr)
    # On Ctrl+C, replies still being written get a few seconds, then are cut off.
    uvicorn.Server(uvicorn.Config(create_app(chat, name), log_level="info", timeout_graceful_shutdown=3)).run(
        sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
