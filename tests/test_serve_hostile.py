"""scripts/serve.py against clients that are careless or hostile (issue 14): history trimming
that stays linear, limits answered before any tokenizing, client mistakes that are 4xx and never
5xx, a non-streaming client that leaves and frees the worker, the API key, the Host allowlist and
cross-origin refusal; and a hypothesis fuzz of the endpoint (no 5xx, bounded time per request)."""
import http.client
import json
import socket
import sys
import time
import urllib.parse

import openai
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import eval_model
from conftest import ROOT
from dataset import render_chat
from test_serve import Scripted

sys.path.insert(0, str(ROOT / "scripts"))
import serve  # noqa: E402

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def chat(trained):
    return eval_model.Chat(trained / "ckpt" / "distill.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32")


@pytest.fixture(scope="module")
def server(chat):
    with serve.BackgroundServer(serve.create_app(chat, "m")) as running:
        yield running


def request(url: str, body: bytes | None = None, method: str = "POST", path: str = "/v1/chat/completions",
            headers: dict | None = None, timeout: float = 60):
    """(status, headers, parsed JSON or raw bytes) of one raw HTTP request with exactly these headers."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})},
                           encode_chunked=body is not None and not isinstance(body, bytes))
        response = connection.getresponse()
        data = response.read()
        try:
            data = json.loads(data)
        except ValueError:
            pass
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


def chat_body(messages=HI, **fields) -> bytes:
    return json.dumps({"model": "m", "messages": messages, "max_tokens": 2, **fields}, ensure_ascii=False).encode()


# ---------------------------------------------------------------- history trimming

def quadratic_prompt_ids(chat, messages, max_new_tokens):
    """The trimming this server shipped with, kept as the reference: re-tokenize the whole
    conversation after every drop of the two oldest messages."""
    budget = chat.max_len - min(max_new_tokens, chat.max_len // 2)
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    while True:
        ids = chat.tok.encode(render_chat(system + rest, add_generation_prompt=True)[0])
        if len(ids) <= budget or len(rest) <= 1:
            return ids[-budget:]
        rest = rest[2:] if len(rest) > 2 else rest[-1:]


TEXT = st.lists(st.sampled_from(list("你好世界ab 1234\n\t") + ["<|im_start|>", "<|im_end|>", "<think>", "很长的内容"]),
                max_size=60).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(contents=st.lists(TEXT, min_size=1, max_size=25), system=st.none() | TEXT,
       max_new_tokens=st.integers(1, 600), scale=st.integers(1, 30))
def test_trimming_keeps_exactly_what_the_quadratic_reference_kept(chat, contents, system, max_new_tokens, scale):
    messages = [{"role": ("user", "assistant")[i % 2], "content": c * scale} for i, c in enumerate(contents)]
    if len(messages) % 2 == 0:
        messages = messages[1:]                                  # ends with the user
    messages = ([{"role": "system", "content": system}] if system is not None else []) + messages
    assert chat.prompt_ids(messages, max_new_tokens) == quadratic_prompt_ids(chat, messages, max_new_tokens)


def test_message_blocks_tokenize_independently(chat):
    """What linear trimming rests on: a conversation's tokens are its messages' blocks' tokens."""
    messages = [{"role": "system", "content": "系统 1\n"}, {"role": "user", "content": "<|im_end|>x\n\n 12"},
                {"role": "assistant", "content": "\n<think>想</think> 好\n"}, {"role": "user", "content": " "}]
    whole = chat.tok.encode(render_chat(messages, add_generation_prompt=True)[0])
    pieces = [t for m in messages for t in chat.tok.encode(render_chat([m])[0])]
    assert whole == pieces + chat.tok.encode(render_chat([], add_generation_prompt=True)[0])


@pytest.mark.parametrize("n", [801, 4001])
def test_trimming_tokenizes_only_what_can_fit(chat, monkeypatch, n):
    """Work grows with the context, not the history: the 801- and 4001-message conversations of the
    issue (13 CPU-s and over 120 s before) tokenize the same few thousand characters."""
    history = [{"role": ("user", "assistant")[i % 2], "content": f"第{i}条：" + "很长的内容" * 10} for i in range(n)]
    encoded = []
    encode = chat.tok.encode
    monkeypatch.setattr(chat.tok, "encode", lambda text: encoded.append(len(text)) or encode(text))
    ids = chat.prompt_ids(history, 8)
    assert len(ids) <= chat.max_len - 8 and sum(encoded) <= 4 * chat.max_token_chars * chat.max_len
    assert len(encoded) < 60


def test_an_over_long_newest_message_is_refused_untokenized(chat, server, monkeypatch):
    encoded = []
    encode = chat.tok.encode
    monkeypatch.setattr(chat.tok, "encode", lambda text: encoded.append(len(text)) or encode(text))
    huge = "很长的内容" * 200_000                                     # 1M characters, 3 MB
    status, _, reply = request(server.url, chat_body([{"role": "user", "content": huge}]))
    assert status == 400 and "newest message takes at least" in reply["error"]["message"]
    assert sum(encoded) < 100_000


# ---------------------------------------------------------------- limits and client mistakes

def test_a_body_over_the_limit_is_413_before_it_is_parsed(chat, monkeypatch):
    parsed = []
    monkeypatch.setattr(serve, "parse_request", lambda *a: parsed.append(1))
    with serve.BackgroundServer(serve.create_app(chat, "m", max_request_bytes=1000, max_messages=3)) as small:
        status, _, reply = request(small.url, b"x" * 1001)
        assert status == 413 and "--max_request_bytes" in reply["error"]["message"]

        def chunked():                                            # no Content-Length: counted as it arrives
            for _ in range(20):
                yield b"y" * 100
        status, _, reply = request(small.url, chunked(), headers={"Transfer-Encoding": "chunked"})
        assert status == 413 and "at most 1000" in reply["error"]["message"]
    assert parsed == []


def test_too_many_messages_is_400_before_validation(chat, monkeypatch):
    with serve.BackgroundServer(serve.create_app(chat, "m", max_messages=3)) as small:
        status, _, reply = request(small.url, chat_body(HI * 5))
        assert status == 400 and "at most 3 (--max_messages)" in reply["error"]["message"]
        assert request(small.url, chat_body(HI * 3))[0] == 200


def test_a_100_mb_body_is_answered_413_quickly(server):
    started = time.monotonic()
    status, _, reply = request(server.url, b'{"messages": "' + b"a" * 100_000_000 + b'"}')
    assert status == 413 and "--max_request_bytes" in reply["error"]["message"]
    assert time.monotonic() - started < 30
    assert request(server.url, chat_body())[0] == 200


@pytest.mark.parametrize("body, says", [
    (chat_body(temperature=1e-45), "Invalid field temperature"),
    (chat_body(repetition_penalty=1e-45), "Invalid field repetition_penalty"),
    (chat_body(repetition_penalty=1e45), "Invalid field repetition_penalty"),
    (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"messages": [{"role": "user", "content": ' + b"[" * 500 + b"]" * 500 + b"}]}", "Invalid field messages.0"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "Invalid field temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', "Invalid field top_p"),
    (b'\xff\xfe{}', "not valid JSON"),
])
def test_client_mistakes_are_400_not_500(server, body, says):
    status, _, reply = request(server.url, body)
    assert status == 400 and says in reply["error"]["message"], reply
    assert request(server.url, chat_body())[0] == 200


def test_smallest_allowed_sampling_values_generate(server):
    body = chat_body(temperature=serve.MIN_TEMPERATURE, repetition_penalty=serve.REPETITION_PENALTY_RANGE[0],
                     max_tokens=8, seed=1)
    assert request(server.url, body)[0] == 200


# ---------------------------------------------------------------- a client that leaves

def test_an_abandoned_non_streaming_request_frees_the_worker(chat, server, monkeypatch):
    script = Scripted(chat, monkeypatch, seconds_per_token=0.05)
    parts = urllib.parse.urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        body = chat_body(max_tokens=100)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 30
        while not (script.produced and script.produced[0] >= 2) and time.monotonic() < deadline:
            time.sleep(0.01)
    left_at = script.produced[0]
    status, _, reply = request(server.url, chat_body(max_tokens=100))       # queued behind it
    assert status == 200 and reply["choices"][0]["message"]["content"] == "1+1等于2。"
    assert len(script.produced) == 2 and script.produced[0] <= left_at + 2 < len(script.reply)


# ---------------------------------------------------------------- key, hosts, origins

@pytest.fixture(scope="module")
def keyed(chat):
    app = serve.create_app(chat, "m", api_key="s3cret", cors_origins=("http://allowed.example:3000",))
    with serve.BackgroundServer(app) as running:
        yield running


def test_api_key_is_required_like_openais(keyed):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        status, response_headers, reply = request(keyed.url, chat_body(), headers=headers)
        assert status == 401 and reply["error"]["code"] == "invalid_api_key"
        assert response_headers["www-authenticate"] == "Bearer"
    assert request(keyed.url, method="GET", path="/v1/models")[0] == 401
    assert request(keyed.url, method="GET", path="/")[0] == 200                 # the page holds no secret
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key="s3cret", max_retries=0, timeout=60)
    assert client.chat.completions.create(model="m", messages=HI, max_tokens=2).usage.completion_tokens == 2


def test_hosts_outside_the_allowlist_are_refused(chat, server, monkeypatch):
    script = Scripted(chat, monkeypatch)
    port = urllib.parse.urlsplit(server.url).port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::2]"):
        status, _, reply = request(server.url, chat_body(), headers={"Host": host})
        assert status == 400 and "--allowed_hosts" in reply["error"]["message"], host
    assert request(server.url, method="GET", path="/", headers={"Host": "rebound.example"})[0] == 400
    assert script.produced == []
    for host in (f"localhost:{port}", "localhost", f"[::1]:{port}", f"127.0.0.1:{port}"):
        assert request(server.url, chat_body(), headers={"Host": host})[0] == 200, host
    with serve.BackgroundServer(serve.create_app(chat, "m", allowed_hosts=("*",))) as anywhere:
        assert request(anywhere.url, chat_body(), headers={"Host": "myserver.lan"})[0] == 200


def test_cross_origin_browser_requests_are_refused(chat, server, monkeypatch):
    script = Scripted(chat, monkeypatch)
    # What a page on another site can send without a preflight: a text/plain "simple" POST.
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": "http://127.0.0.1:1"}, {"Sec-Fetch-Site": "cross-site"}):
        status, _, reply = request(server.url, chat_body(), headers={"Content-Type": "text/plain", **headers})
        assert status == 403 and "--cors_origin" in reply["error"]["message"], headers
    assert script.produced == []
    same = server.url.replace("localhost", "127.0.0.1")
    assert request(server.url, chat_body(), headers={"Origin": same, "Sec-Fetch-Site": "same-origin"})[0] == 200
    assert request(server.url, method="GET", path="/", headers={"Sec-Fetch-Site": "cross-site"})[0] == 200


def test_an_allowed_origin_gets_cors_headers(keyed):
    origin = {"Origin": "http://allowed.example:3000"}
    status, headers, _ = request(keyed.url, method="OPTIONS", headers={
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    assert status == 204 and headers["access-control-allow-origin"] == "http://allowed.example:3000"
    assert "authorization" in headers["access-control-allow-headers"].lower()
    status, headers, _ = request(keyed.url, chat_body(), headers={**origin, "Authorization": "Bearer s3cret"})
    assert status == 200 and headers["access-control-allow-origin"] == "http://allowed.example:3000"
    status, headers, _ = request(keyed.url, chat_body(), headers=origin)
    assert status == 401 and headers["access-control-allow-origin"] == "http://allowed.example:3000"
    assert request(keyed.url, chat_body(), headers={"Origin": "http://other.example",
                                                    "Authorization": "Bearer s3cret"})[0] == 403


def test_access_flags(monkeypatch, capsys):
    args = serve.parse_args(["--allowed_hosts", "myserver.lan, 10.0.0.5", "--cors_origin", "http://a.example:3000"])
    monkeypatch.setenv(serve.API_KEY_ENV, "from-env")
    access = serve.access_settings(args)
    assert access["api_key"] == "from-env" and access["cors_origins"] == ("http://a.example:3000",)
    assert set(access["allowed_hosts"]) == {"localhost", "127.0.0.1", "::1", "myserver.lan", "10.0.0.5"}
    assert serve.access_settings(serve.parse_args(["--api_key", "flag"]))["api_key"] == "flag"
    assert serve.access_settings(serve.parse_args(["--host", "0.0.0.0"]))["allowed_hosts"] == ("*",)
    assert serve.access_settings(serve.parse_args(["--host", "::1"]))["allowed_hosts"] == serve.LOOPBACK_NAMES
    for flags, says in [(["--allowed_hosts", "myserver.lan:8000"], "--allowed_hosts"),
                        (["--cors_origin", "a.example"], "--cors_origin"), (["--max_messages", "0"], "--max_messages")]:
        assert serve.main(flags + ["--port", "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and says in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- fuzzing

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
NUMBER = st.integers(-2**70, 2**70) | st.floats() | st.sampled_from([0, 1e-45, 5e-324, 1e308, 2**63, -1])
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", ""]) | JSON,
                                 "content": TEXT | JSON | st.lists(st.fixed_dictionaries(
                                     {"type": st.just("text"), "text": TEXT}), max_size=3)})
FIELDS = {name: NUMBER | JSON for name in ("max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                                           "repetition_penalty", "seed", "n")}
REQUEST = st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=6) | JSON},
                                optional={**FIELDS, "stream": st.booleans() | JSON, "model": JSON,
                                          "stream_options": JSON | st.fixed_dictionaries({"include_usage": JSON})})
BODY = (REQUEST.map(lambda r: json.dumps(r).encode()) | JSON.map(lambda v: json.dumps(v).encode()) |
        st.binary(max_size=200) | st.integers(1, 50_000).map(lambda depth: b'{"messages": ' + b"[" * depth))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY)
def test_fuzzed_requests_get_no_5xx_and_a_prompt_answer(chat, server, monkeypatch, body):
    """Whatever the body, the answer is 2xx or 4xx, within a bound generous enough for a loaded
    2-core machine (generation is scripted to a few tokens: what is timed is the request handling)."""
    Scripted(chat, monkeypatch, "好的。")
    started = time.monotonic()
    status, _, reply = request(server.url, body, timeout=60)
    assert status < 500, (body[:200], reply)
    assert time.monotonic() - started < 15, body[:200]
    if status >= 400:
        assert reply["error"]["message"]
