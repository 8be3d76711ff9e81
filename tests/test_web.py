"""The web chat page (mini_nanochat/static/index.html) in a real browser: Playwright driving Debian's chromium.

The page is served by a stub of the OpenAI-compatible API (stdlib http.server, in a thread) whose
/v1/chat/completions replies are scripted by the last user message and streamed as server-sent events,
so the test exercises the page alone: streaming, multi-turn, edit + regenerate, settings, text-only
rendering of model output (HTML and an <img onerror> are shown as text), the calculator segment's styling,
the token view (logprobs) and the display of an error response.

Skipped only when no chromium binary is found (.ci/run installs Debian's `chromium`) or when the
playwright package is missing (it is in the dev extra).
"""
from __future__ import annotations

import json
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium; .ci/run does it)")

INDEX = Path(__file__).resolve().parents[1] / "mini_nanochat" / "static" / "index.html"

# The scripted reply to "hello": a calculator call, HTML that must stay text, and an XSS attempt.
HELLO_CHUNKS = ["Sure: ", "[calculator: 2 ", "+ 2 = 4]", " so <b>not bold</b> and ",
                '<img src=x onerror="window.__xss=1">', " done."]
HELLO_REPLY = "".join(HELLO_CHUNKS)
TOKENS = [("Hi", -0.05, [("Hi", -0.05), ("Hello", -3.2)]), ("!", -0.7, [("!", -0.7), (".", -0.9)])]


class Stub:
    """State shared with the handler: the request bodies received, and a gate that holds the last chunk
    of the "hello" reply until the test has seen the reply streaming."""

    def __init__(self):
        self.requests: list[dict] = []
        self.gate = threading.Event()
        # what the stub does with logprobs: "stream" (with streaming too), "whole" (only with stream: false,
        # like mini_nanochat.server today), "none" (refused)
        self.logprobs = "stream"


def make_handler(stub: Stub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, status, body: bytes, ctype):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/":
                self._send(200, INDEX.read_bytes(), "text/html; charset=utf-8")
            elif self.path == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [{"id": "stub-model", "object": "model"}]}).encode(),
                           "application/json")
            else:
                self._send(404, b'{"detail": "Not Found"}', "application/json")

        def do_POST(self):
            if self.path != "/v1/chat/completions":
                return self._send(404, b'{"detail": "Not Found"}', "application/json")
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stub.requests.append(body)
            last = body["messages"][-1]["content"]
            if last == "fail":
                err = {"error": {"message": "model is busy, try again later", "type": "server_error"}}
                return self._send(503, json.dumps(err).encode(), "application/json")
            if body.get("logprobs") and (stub.logprobs == "none" or stub.logprobs == "whole" and body["stream"]):
                err = {"error": {"message": "logprobs are not supported here", "param": "logprobs"}}
                return self._send(400, json.dumps(err).encode(), "application/json")
            if not body.get("stream"):
                entries = [{"token": tok, "logprob": lp, "top_logprobs": [{"token": t, "logprob": l} for t, l in top]}
                           for tok, lp, top in TOKENS]
                reply = {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub-model",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"},
                                      "logprobs": {"content": entries} if body.get("logprobs") else None,
                                      "finish_reason": "stop"}]}
                return self._send(200, json.dumps(reply).encode(), "application/json")
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()

            def event(delta, logprobs=None):
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                if logprobs is not None:
                    choice["logprobs"] = {"content": logprobs}
                chunk = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0,
                         "model": "stub-model", "choices": [choice]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            event({"role": "assistant", "content": ""})
            if last == "hello":
                for i, piece in enumerate(HELLO_CHUNKS):
                    if i == len(HELLO_CHUNKS) - 1:
                        stub.gate.wait(10)
                    event({"content": piece})
                    time.sleep(0.02)
            elif last == "tokens":
                for tok, lp, top in TOKENS:
                    entry = {"token": tok, "logprob": lp, "top_logprobs": [{"token": t, "logprob": l} for t, l in top]}
                    event({"content": tok}, [entry] if body.get("logprobs") else None)
            else:
                for piece in ("You said: ", last):
                    event({"content": piece})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


@pytest.fixture(scope="module")
def stub_server():
    stub = Stub()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(stub))
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    stub.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    yield stub
    stub.gate.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser():
    pw = sync_api.sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                           args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def page(browser, stub_server):
    ctx = browser.new_context()
    p = ctx.new_page()
    p.set_default_timeout(10_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(stub_server.url)
    yield p
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def send(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")


def wait_idle(page):
    page.wait_for_function("!document.querySelector('.msg.streaming') && !document.getElementById('send').disabled")


def assistant_texts(page):
    return page.locator(".msg.assistant .content").all_inner_texts()


def test_chat_streams_multi_turn_edit_regenerate(page, stub_server):
    expect = sync_api.expect
    stub = stub_server
    stub.requests.clear()
    stub.gate.clear()
    expect(page.locator("#model-name")).to_have_text("model: stub-model")
    page.fill("#temperature", "0.9")
    page.fill("#top-k", "7")

    # turn 1: the reply streams in (the stub holds its last chunk until we have seen the partial reply)
    send(page, "hello")
    streaming = page.locator(".msg.assistant.streaming .content")
    expect(streaming).to_contain_text("not bold")
    assert "done." not in streaming.inner_text()
    stub.gate.set()
    wait_idle(page)
    expect(page.locator(".msg.assistant .content")).to_have_text(HELLO_REPLY)

    body = stub.requests[-1]
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert body["stream"] is True and body["temperature"] == 0.9 and body["top_k"] == 7
    assert body["model"] == "stub-model"

    # model output is text: no element was made from it, and the onerror never ran
    assert page.locator("#messages b").count() == 0
    assert page.locator("#messages img").count() == 0
    assert page.evaluate("window.__xss") is None
    # the calculator call has its own styled element
    tool = page.locator(".msg.assistant .tool-call")
    expect(tool).to_have_count(1)
    expect(tool).to_have_text("[calculator: 2 + 2 = 4]")
    plain_bg = page.evaluate("getComputedStyle(document.querySelector('.msg.assistant .content')).backgroundColor")
    tool_bg = tool.evaluate("el => getComputedStyle(el).backgroundColor")
    assert tool_bg != plain_bg
    # no logprobs from the API: no token view
    assert page.locator(".msg.has-logprobs").count() == 0
    expect(page.locator("#token-view")).to_be_hidden()

    # turn 2: the whole conversation is sent
    send(page, "what next?")
    wait_idle(page)
    assert stub.requests[-1]["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": HELLO_REPLY},
        {"role": "user", "content": "what next?"},
    ]
    assert assistant_texts(page) == [HELLO_REPLY, "You said: what next?"]

    # edit the second user message: the reply after it is replaced
    page.locator(".msg.user").nth(1).locator(".edit-btn").click()
    page.locator(".msg.user textarea.edit").fill("something else")
    page.locator(".save-btn").click()
    wait_idle(page)
    assert stub.requests[-1]["messages"][-1] == {"role": "user", "content": "something else"}
    assert len(stub.requests[-1]["messages"]) == 3
    assert assistant_texts(page) == [HELLO_REPLY, "You said: something else"]

    # edit the first message: everything after it is dropped, one new reply
    page.locator(".msg.user").nth(0).locator(".edit-btn").click()
    page.locator(".msg.user textarea.edit").fill("hi again")
    page.locator(".save-btn").click()
    wait_idle(page)
    assert stub.requests[-1]["messages"] == [{"role": "user", "content": "hi again"}]
    assert page.locator(".msg").count() == 2
    assert assistant_texts(page) == ["You said: hi again"]

    # regenerate the last reply: same conversation sent again, still one reply
    n = len(stub.requests)
    page.locator(".regen-btn").click()
    wait_idle(page)
    assert len(stub.requests) == n + 1
    assert stub.requests[-1]["messages"] == [{"role": "user", "content": "hi again"}]
    assert assistant_texts(page) == ["You said: hi again"]


def test_error_response_is_displayed(page, stub_server):
    expect = sync_api.expect
    send(page, "fail")
    err = page.locator(".error")
    expect(err).to_contain_text("503")
    expect(err).to_contain_text("model is busy, try again later")
    wait_idle(page)
    assert page.locator(".msg.assistant").count() == 0      # no empty reply left behind
    expect(page.locator(".msg.user .content")).to_have_text("fail")
    expect(page.locator(".error .retry-btn")).to_be_visible()
    # a new message replaces the unanswered one (turns must alternate) and clears the error
    send(page, "ok now")
    wait_idle(page)
    assert stub_server.requests[-1]["messages"] == [{"role": "user", "content": "ok now"}]
    assert page.locator(".error").count() == 0
    assert assistant_texts(page) == ["You said: ok now"]


@pytest.mark.parametrize("mode", ["stream", "whole", "none"])
def test_token_view(page, stub_server, mode):
    """Token view on: logprobs streamed, or (the server refusing them with streaming) asked without
    streaming, or (the server refusing them) the reply streamed without them and the view switched off."""
    expect = sync_api.expect
    stub_server.logprobs = mode
    try:
        # off by default: a plain streamed reply, no logprobs asked, nothing to click
        send(page, "first")
        wait_idle(page)
        assert "logprobs" not in stub_server.requests[-1]
        assert page.locator(".msg.has-logprobs").count() == 0
        page.check("#want-logprobs")
        n = len(stub_server.requests)
        send(page, "tokens")
        wait_idle(page)
        expect(page.locator(".msg.assistant .content").nth(1)).to_have_text("Hi!")
        sent = stub_server.requests[n:]
        assert page.locator(".error").count() == 0
        expect(page.locator("#token-view")).to_be_hidden()
        if mode == "none":
            assert [(b.get("logprobs"), b["stream"]) for b in sent] == [(True, True), (True, False), (None, True)]
            assert page.locator(".msg.has-logprobs").count() == 0
            expect(page.locator("#want-logprobs")).to_be_disabled()
            expect(page.locator("#want-logprobs")).not_to_be_checked()
            return
        expected = [(True, True)] if mode == "stream" else [(True, True), (True, False)]
        assert [(b.get("logprobs"), b["stream"]) for b in sent] == expected
        reply = page.locator(".msg.assistant.has-logprobs")
        expect(reply).to_have_count(1)
        reply.click()
        expect(page.locator("#token-view")).to_be_visible()
        tokens = page.locator("#token-list .token")
        expect(tokens).to_have_count(2)
        tokens.nth(0).click()
        alts = page.locator("#token-alts")
        expect(alts).to_contain_text('"Hello"')
        expect(alts).to_contain_text("95.1%")  # exp(-0.05)
        if mode == "whole":  # the page remembers: the next request goes straight to stream: false
            n = len(stub_server.requests)
            send(page, "tokens")
            wait_idle(page)
            assert [(b.get("logprobs"), b["stream"]) for b in stub_server.requests[n:]] == [(True, False)]
    finally:
        stub_server.logprobs = "stream"


# ---------------------------------------------------------------------------------------------------
# the page against the real API (mini_nanochat.server) with a tiny model, on a live uvicorn server
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_server(base_dir, tmp_path_factory):
    server = pytest.importorskip("mini_nanochat.server", reason="mini_nanochat.server is not there yet")
    uvicorn = pytest.importorskip("uvicorn")
    import socket

    from mini_nanochat.checkpoint import load_model
    from mini_nanochat.engine import Engine
    from mini_nanochat.stages import base_train, tok_train

    tok_train.main(["--name", "web-test", "--vocab-size", "512", "--max-chars", "300000"])
    run = tmp_path_factory.mktemp("webrun") / "run"
    base_train.main(["--depth", "1", "--max-seq-len", "256", "--device-batch-size", "2", "--tokenizer", "web-test",
                     "--num-iterations", "2", "--eval-every", "0", "--eval-tokens", "256", "--run-dir", str(run)])
    model, tok, _ = load_model(run, "cpu")
    app = server.create_app([Engine(model, tok)], tok, model_id="tiny", chat=True)
    if not any(getattr(r, "path", None) == "/" for r in app.routes):  # until the app serves the page itself
        from fastapi.responses import FileResponse

        app.add_api_route("/", lambda: FileResponse(INDEX), methods=["GET"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not srv.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(10)


def test_page_against_the_real_server(browser, real_server):
    expect = sync_api.expect
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(real_server)
        expect(page.locator("#model-name")).to_have_text("model: tiny")
        page.fill("#max-tokens", "8")
        send(page, "What is 2+2?")
        wait_idle(page)
        assert page.locator(".error").count() == 0, page.locator(".error").all_inner_texts()
        expect(page.locator(".msg.assistant")).to_have_count(1)
        # a second turn and a regeneration are accepted by the real API (turns alternate)
        send(page, "And 3+3?")
        wait_idle(page)
        page.locator(".regen-btn").click()
        wait_idle(page)
        assert page.locator(".error").count() == 0, page.locator(".error").all_inner_texts()
        expect(page.locator(".msg.assistant")).to_have_count(2)
        # token view: this server gives logprobs only without streaming; the page falls back to that
        page.check("#want-logprobs")
        send(page, "Hello")
        wait_idle(page)
        assert page.locator(".error").count() == 0, page.locator(".error").all_inner_texts()
        last = page.locator(".msg.assistant").last
        if last.locator(".content").inner_text().strip():  # an empty reply has no tokens to show
            expect(last).to_have_class(re.compile(r"\bhas-logprobs\b"))
            last.click()
            expect(page.locator("#token-view")).to_be_visible()
            assert page.locator("#token-list .token").count() >= 1
        # a bad request (top-k above the server's limit) is shown as the API's error message
        page.fill("#top-k", "1000")
        send(page, "Again")
        expect(page.locator(".error")).to_contain_text("Error 400")
        expect(page.locator(".error")).to_contain_text("top_k")
    finally:
        ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
