"""The chat page served by scripts/serve.py, driven in a real headless browser (Debian's
/usr/bin/chromium through Playwright): a typed message gets a streamed reply, the next turn
sends the history and the page's parameters, a distilled model's thinking sits in a
collapsible block, and a server error is shown in the conversation.

Needs `bash scripts/install_browser.sh` and `pip install playwright` (never `playwright
install`: the test uses the system chromium); skipped with the reason when either is absent.
"""
import re
import sys
import time
from pathlib import Path

import pytest

import eval_model
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import serve  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing; install it with: bash scripts/install_browser.sh", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed; pip install playwright")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
GREEDY = dict(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    page.set_default_timeout(20_000)
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    yield page
    page.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture(scope="module")
def sft_chat(trained):
    return eval_model.Chat(trained / "ckpt" / "sft.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32")


@pytest.fixture(scope="module")
def sft_server(sft_chat):
    with serve.BackgroundServer(serve.create_app(sft_chat, "xiaoxin-sft")) as running:
        yield running


def assistant(page, n: int):
    return page.locator(".message.assistant").nth(n)


def wait_done(page, n: int):
    """Wait until the n-th assistant message has stopped streaming; returns its state."""
    message = assistant(page, n)
    sync_api.expect(message).to_have_attribute("data-state", re.compile("done|error|stopped"))
    return message.get_attribute("data-state")


def test_a_typed_message_gets_the_streamed_reply_and_the_next_turn_sends_the_history(page, sft_server, sft_chat,
                                                                                   monkeypatch):
    # A tiny model trained for four steps may answer with nothing but newlines, which a page cannot
    # show: its generator is scripted with a visible reply that names the prompt's length, so the two
    # turns differ, and it records the sampling settings the page's parameters arrive as.
    seen = []

    def generate(x, max_new_tokens, **sampling):
        seen.append(dict(sampling, max_new_tokens=max_new_tokens))
        ids = sft_chat.tok.encode(f"这是对{x.shape[-1]}个词元的回答。")
        yield from ids[:max_new_tokens]
    monkeypatch.setattr(sft_chat.model, "generate", generate)
    first = [{"role": "user", "content": "你好"}]
    expected = sft_chat.reply(first, **GREEDY)
    assert expected.startswith("这是对") and expected.endswith("个词元的回答。")
    seen.clear()
    page.goto(sft_server.url)
    page.wait_for_function("document.getElementById('model-name').textContent === 'xiaoxin-sft'")
    page.click("#settings summary")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "24")
    page.fill("#prompt", "你好")
    page.press("#prompt", "Enter")
    assert wait_done(page, 0) == "done"
    assert assistant(page, 0).locator(".content").text_content() == expected
    assert assistant(page, 0).locator(".reasoning").is_hidden()          # this model does not think
    assert page.locator("#prompt").input_value() == ""

    page.fill("#prompt", "再说一遍")
    with page.expect_request("**/v1/chat/completions") as request:
        page.click("#send")
    body = request.value.post_data_json
    history = first + [{"role": "assistant", "content": expected}, {"role": "user", "content": "再说一遍"}]
    assert body["messages"] == history and body["stream"] is True
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("xiaoxin-sft", 0, 24)
    assert "top_p" not in body                                             # left empty: the server's default
    assert wait_done(page, 1) == "done"
    second = sft_chat.reply(history, **GREEDY)
    assert second != expected and assistant(page, 1).locator(".content").text_content() == second
    assert [(s["max_new_tokens"], s.get("temperature")) for s in seen[:2]] == [(24, 0), (24, 0)]


def test_a_server_error_is_shown_in_the_conversation(page, sft_server):
    page.goto(sft_server.url)
    page.fill("#prompt", "很长的内容" * 600)
    page.click("#send")
    assert wait_done(page, 0) == "error"
    assert "shorten it or lower max_tokens" in assistant(page, 0).locator(".content").text_content()
    assert page.locator("#send").is_enabled()


def test_thinking_streams_into_a_collapsible_block(page, trained, monkeypatch):
    chat = eval_model.Chat(trained / "ckpt" / "distill.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32")
    reply = "<think>\n先算一算：1+1=2。\n</think>\n<answer>\n1+1等于2，这是最简单的加法。\n</answer>"
    ids = chat.tok.encode(reply) + [chat.tok.im_end_id]

    def generate(x, max_new_tokens, **sampling):       # the tiny model never thinks: script it, slowly
        for token in ids[:max_new_tokens]:
            time.sleep(0.05)
            yield token
    monkeypatch.setattr(chat.model, "generate", generate)

    with serve.BackgroundServer(serve.create_app(chat, "xiaoxin-distill")) as server:
        page.goto(server.url)
        page.fill("#prompt", "1+1等于几？")
        page.click("#send")
        # The thinking shows, unfolded, while it is written; then the answer streams in below it.
        page.wait_for_function("""() => {
            const d = document.querySelector('.message.assistant .reasoning');
            return d && !d.hidden && d.open && d.textContent.includes('先算');
        }""")
        page.wait_for_function("""() => {
            const m = document.querySelector('.message.assistant');
            return m.dataset.state === 'streaming' && m.querySelector('.content').textContent.length > 0;
        }""")
        assert page.locator("#stop").is_visible() and page.locator("#send").is_disabled()
        assert wait_done(page, 0) == "done"
    message = assistant(page, 0)
    assert message.locator(".content").text_content() == "1+1等于2，这是最简单的加法。"
    assert message.locator(".reasoning-text").text_content() == "先算一算：1+1=2。"
    assert message.locator(".reasoning summary").text_content() == "思考过程"
    assert message.locator(".reasoning").evaluate("d => d.open") is False   # folded once the answer began
    message.locator(".reasoning summary").click()
    assert message.locator(".reasoning-text").is_visible()                  # and opens again on a click


def test_the_page_works_with_an_api_key(page, sft_chat, monkeypatch):
    """A server started with --api_key: the page asks for the key, keeps it, and sends it as a
    Bearer token with every request (models list and chat)."""
    def generate(x, max_new_tokens, **sampling):
        yield from sft_chat.tok.encode("钥匙对了。")[:max_new_tokens]
    monkeypatch.setattr(sft_chat.model, "generate", generate)
    with serve.BackgroundServer(serve.create_app(sft_chat, "xiaoxin-keyed", api_key="s3cret")) as server:
        page.goto(server.url)
        page.fill("#prompt", "你好")
        page.click("#send")
        assert wait_done(page, 0) == "error"                              # no key yet: 401, shown
        assert "API key" in assistant(page, 0).locator(".content").text_content()
        assert page.locator("#api_key").is_visible()                       # the settings opened on it
        page.fill("#api_key", "s3cret")
        page.dispatch_event("#api_key", "change")
        page.wait_for_function("document.getElementById('model-name').textContent === 'xiaoxin-keyed'")
        page.fill("#prompt", "你好")
        with page.expect_request("**/v1/chat/completions") as request:
            page.click("#send")
        assert request.value.headers["authorization"] == "Bearer s3cret"
        assert wait_done(page, 1) == "done"
        assert assistant(page, 1).locator(".content").text_content() == "钥匙对了。"
        page.reload()                                                      # the key is remembered
        page.wait_for_function("document.getElementById('model-name').textContent === 'xiaoxin-keyed'")
