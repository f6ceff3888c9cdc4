"""scripts/serve.py through the official openai client, against the tiny trained distill model
served in-process by uvicorn on a free loopback port: replies equal eval_model's, streamed or
not; reasoning comes back apart; requests queue safely; user mistakes get clear 4xx errors."""
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
from hypothesis import given, strategies as st

import eval_model
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import serve  # noqa: E402

SERVED = "xiaoxin-test"
SCRIPTED = "<think>\n先算一算：1+1=2。\n</think>\n<answer>\n1+1等于2。\n</answer>"
REPEATED = "<think>\n想一想<think>再想</think>\n<answer>\n答案一</answer>\n<answer>答案二</answer><think>又想</think>"
TAG = re.compile("(<think>|</think>|<answer>|</answer>)")


def split_reasoning(text: str) -> tuple[str, str]:
    """The reference for the streamed splitter: ('reasoning', 'answer') from a whole reply. A reply
    that opens with <think> is reasoning until its first </think> or <answer>, the rest is answer;
    every tag is dropped, however many come."""
    text = text.lstrip()
    if not text.startswith("<think>"):
        return "", TAG.sub("", text).strip()
    parts = TAG.split(text[len("<think>"):])
    end = next((i for i, part in enumerate(parts) if part in ("</think>", "<answer>")), len(parts))
    reasoning, answer = "".join(parts[:end]), "".join(parts[end + 1:])
    return TAG.sub("", reasoning).strip(), TAG.sub("", answer).strip()


def test_split_reasoning():
    assert split_reasoning("<think>\n想一想\n</think>\n<answer>\n答案\n</answer>") == ("想一想", "答案")
    assert split_reasoning("没有标签") == ("", "没有标签")
    assert split_reasoning(REPEATED) == ("想一想再想", "答案一\n答案二又想")
    assert split_reasoning("<think>想<answer>答</answer>") == ("想", "答")
    assert split_reasoning("先说<think>想</think>答") == ("", "先说想答")


@pytest.fixture(scope="module")
def chat(trained):
    return eval_model.Chat(trained / "ckpt" / "distill.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32")


@pytest.fixture(scope="module")
def server(chat):
    with serve.BackgroundServer(serve.create_app(chat, SERVED)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


class Scripted:
    """Makes the served model 'generate' `text` (then <|im_end|>) through the real tokenizer and
    decoding path, so tests can see what the server does with a reply the tiny model never
    writes; records how many generations ran at once and how many tokens each one produced."""

    def __init__(self, chat, monkeypatch, text=SCRIPTED, seconds_per_token=0.0):
        self.ids = chat.tok.encode(text)
        assert chat.tok.decode(self.ids) == text
        self.reply = self.ids + [chat.tok.im_end_id]
        self.seconds_per_token, self.running, self.most_at_once, self.produced = seconds_per_token, 0, 0, []
        monkeypatch.setattr(chat.model, "generate", self.generate)

    def generate(self, x, max_new_tokens, **sampling):
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.produced.append(0)
        try:
            for token in self.reply[:max_new_tokens]:
                time.sleep(self.seconds_per_token)
                self.produced[-1] += 1
                yield token
        finally:
            self.running -= 1


def streamed(client, **request):
    """(reasoning, content, finish_reason, usage, number of content/reasoning chunks) of a streamed reply."""
    reasoning, content, finish, usage, chunks = [], [], None, None, 0
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request):
        assert chunk.object == "chat.completion.chunk"
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            r, c = getattr(choice.delta, "reasoning_content", None), choice.delta.content
            chunks += bool(r) + bool(c)
            reasoning.append(r or "")
            content.append(c or "")
    return "".join(reasoning), "".join(content), finish, usage, chunks


def post(server, body: bytes, path="/v1/chat/completions"):
    """(status, parsed JSON body) of a raw POST, errors included."""
    request = urllib.request.Request(server.url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [SERVED]


@pytest.mark.parametrize("sampling", [dict(temperature=0.0, top_p=0.85), dict(temperature=1.0, top_p=1.0, seed=3)],
                         ids=["greedy", "seeded"])
def test_replies_equal_eval_model_streamed_or_not(sampling, trained, chat, client, tmp_path, capsys):
    prompt = "你好，介绍一下你自己"
    (tmp_path / "p.txt").write_text(prompt, encoding="utf-8")
    flags = ["--save_dir", str(trained / "ckpt"), "--stage", "distill", "--prompts_file", str(tmp_path / "p.txt"),
             "--max_new_tokens", "24"] + [f for k, v in sampling.items() for f in (f"--{k}", str(v))]
    assert eval_model.main(flags) == 0
    raw = json.loads(capsys.readouterr().out)["reply"]
    messages = [{"role": "user", "content": prompt}]

    reply = client.chat.completions.create(model="any-name-at-all", messages=messages, max_tokens=24, **sampling)
    message = reply.choices[0].message
    assert reply.model == "any-name-at-all" and reply.object == "chat.completion"
    assert (message.reasoning_content, message.content) == split_reasoning(raw)
    prompt_tokens = len(chat.prompt_ids(messages, 24))
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == \
           (prompt_tokens, 24, prompt_tokens + 24)          # the tiny model never stops by itself
    assert reply.choices[0].finish_reason == "length"

    reasoning, content, finish, usage, _ = streamed(client, model="m", messages=messages,
                                                    max_completion_tokens=24, **sampling)
    assert (reasoning, content, finish) == (message.reasoning_content, message.content, "length")
    assert (usage.prompt_tokens, usage.completion_tokens) == (reply.usage.prompt_tokens, 24)


def test_reasoning_comes_back_apart_streamed_or_not(chat, client, monkeypatch):
    ids = Scripted(chat, monkeypatch).ids
    messages = [{"role": "user", "content": "1+1等于几？"}]
    reply = client.chat.completions.create(model="m", messages=messages)
    assert reply.choices[0].message.reasoning_content == "先算一算：1+1=2。"
    assert reply.choices[0].message.content == "1+1等于2。"
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == len(ids)

    order = []
    for chunk in client.chat.completions.create(model="m", messages=messages, stream=True):
        delta = chunk.choices[0].delta
        for field in ("reasoning_content", "content"):
            if getattr(delta, field, None):
                order.append((field, getattr(delta, field)))
    assert not any("<" in text for _, text in order)                   # no tag leaks into a delta
    fields = [field for field, _ in order]
    assert fields == sorted(fields, reverse=True)                       # all reasoning before the answer
    assert "".join(t for f, t in order if f == "reasoning_content") == "先算一算：1+1=2。"
    assert "".join(t for f, t in order if f == "content") == "1+1等于2。"


def test_repeated_tags_give_one_reasoning_and_one_answer(chat, client, monkeypatch):
    Scripted(chat, monkeypatch, REPEATED)
    messages = [{"role": "user", "content": "1+1等于几？"}]
    message = client.chat.completions.create(model="m", messages=messages).choices[0].message
    assert (message.reasoning_content, message.content) == ("想一想再想", "答案一\n答案二又想")
    reasoning, content, _, _, _ = streamed(client, model="m", messages=messages)
    assert (reasoning, content) == ("想一想再想", "答案一\n答案二又想")


TEXT = st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "想", "a", "<", ">", " ", "\n"]),
                max_size=14)


@given(parts=TEXT, data=st.data())
def test_streamed_split_equals_split_reasoning(parts, data):
    text = "".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    splitter = serve.ReasoningSplitter()
    out = {"reasoning_content": "", "content": ""}
    for start, end in zip([0] + cuts, cuts + [len(text)]):
        for field, piece in splitter.feed(text[start:end]):
            out[field] += piece
    for field, piece in splitter.finish():
        out[field] += piece
    assert (out["reasoning_content"], out["content"]) == split_reasoning(text)


def test_concurrent_requests_all_succeed_with_their_own_reply(client):
    requests = [dict(model="m", messages=[{"role": "user", "content": f"问题{i}"}], max_tokens=16,
                     temperature=1.0, top_p=1.0, seed=i) for i in range(4)]
    alone = [client.chat.completions.create(**r).choices[0].message.content for r in requests]
    assert len(set(alone)) == 4
    results = [None] * 4

    def ask(i):
        if i % 2:
            results[i] = streamed(client, **requests[i])[1]
        else:
            results[i] = client.chat.completions.create(**requests[i]).choices[0].message.content
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == alone


def test_one_generation_at_a_time(chat, client, monkeypatch):
    script = Scripted(chat, monkeypatch, seconds_per_token=0.01)
    results = []

    def ask():
        results.append(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]))
    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [r.choices[0].message.content for r in results] == ["1+1等于2。"] * 3
    assert script.most_at_once == 1


def test_a_client_that_leaves_stops_its_generation(chat, client, monkeypatch):
    script = Scripted(chat, monkeypatch, seconds_per_token=0.05)
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = iter(stream)
    while not getattr(next(chunks).choices[0].delta, "reasoning_content", None):
        pass                                                 # until generation is under way
    stream.close()
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])   # queued behind it
    assert script.produced[0] < len(script.reply) == script.produced[1]


def test_generation_does_not_block_the_server(chat, client, monkeypatch):
    Scripted(chat, monkeypatch, seconds_per_token=0.1)       # a reply that takes over a second
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "慢慢说"}], stream=True)
    chunks = iter(stream)
    while not getattr(next(chunks).choices[0].delta, "reasoning_content", None):
        pass                                                 # until generation is under way
    started = time.monotonic()
    assert [m.id for m in client.models.list().data] == [SERVED]
    assert time.monotonic() - started < 0.5
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason == "stop"
    assert time.monotonic() - started > 0.5                  # the models request came mid-reply


def test_max_tokens_and_history_that_does_not_fit(chat, client):
    messages = [{"role": "user", "content": "你好"}]
    both = client.chat.completions.create(model="m", messages=messages, max_tokens=30, max_completion_tokens=5)
    assert both.usage.completion_tokens == 5                   # the newer name wins, as in OpenAI's API
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"第{i}个问题：" + "很长的内容" * 10},
                    {"role": "assistant", "content": f"第{i}个回答。" + "很长的回答" * 10}]
    history.append({"role": "user", "content": "最后的问题"})
    reply = client.chat.completions.create(model="m", messages=history, max_tokens=8)
    assert reply.usage.prompt_tokens == len(chat.prompt_ids(history, 8)) <= chat.max_len - 8

    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "很长的内容" * 600}])
    assert error.value.status_code == 400
    assert "newest message takes" in error.value.message and "shorten it or lower max_tokens" in error.value.message


@pytest.mark.parametrize("body, says", [
    (b'{"model": "m", "messages": [', "not valid JSON"),
    (b'[1, 2]', "must be a JSON object"),
    (b'{"messages": []}', "Invalid field messages"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "Invalid field temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": 0}', "Invalid field top_p"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "Invalid field max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 3}', "only n=1 is supported"),
    (b'{"messages": [{"role": "tool", "content": "hi"}]}', "role 'tool' is not supported"),
    (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
     "last message must come from the user"),
])
def test_bad_requests_get_a_clear_openai_error_and_the_server_keeps_serving(server, client, body, says):
    status, reply = post(server, body)
    assert status == 400
    assert reply["error"]["type"] == "invalid_request_error" and says in reply["error"]["message"]
    assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).usage.completion_tokens == 2


def test_unknown_paths_get_an_openai_error_and_the_page_is_served(server):
    status, reply = post(server, b"{}", path="/v1/completions")
    assert status == 404 and "/v1/completions" in reply["error"]["message"]
    for path, expect in [("/", "/static/app.js"), ("/static/app.js", "/v1/chat/completions"),
                         ("/static/style.css", ".reasoning")]:
        with urllib.request.urlopen(server.url + path, timeout=10) as response:
            text = response.read().decode()
        assert expect in text and not re.search(r"https?:|//[a-z]", text)    # no external assets


def test_command_line_errors_are_one_sentence(tmp_path, capsys):
    assert serve.main(["--save_dir", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "holds no trained stage" in err and len(err.splitlines()) == 1
    with serve.bind_socket("127.0.0.1", 0) as busy:
        assert serve.main(["--save_dir", str(tmp_path), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot listen on 127.0.0.1:") and len(err.splitlines()) == 1
