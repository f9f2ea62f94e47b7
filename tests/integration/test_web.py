"""The chat page (la_edge/faces/web) in a real Chromium, against a real server on 127.0.0.1.

Browser tests need Debian's `chromium` (/usr/bin/chromium) and `playwright` (pip); without either
they are skipped with the reason. LA_EDGE_WEB_SCREENSHOT=docs/compare.png also writes the
compare-mode screenshot used in the docs.
"""

import json
import os
import re
import time
from importlib import resources
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from la_edge import Aligner
from la_edge.faces.presets import Steering
from la_edge.faces.principles import PrincipleSpec
from la_edge.faces.server import Server
from la_edge.faces.web import ASSETS, mount_web
from serving import running_server, wait_idle

CHROMIUM = "/usr/bin/chromium"
API_KEY = "web-secret"
STORE = "la_edge.chat.v1"
WAIT_MS = 120_000  # one answer on a busy shared CPU, with room to spare
ANSWER_TAGS = {"P", "BR", "STRONG", "EM", "CODE", "PRE", "UL", "OL", "LI", "H3", "H4", "H5", "H6"}


# ---- no browser, no model --------------------------------------------------------------------
def test_assets_ship_in_the_installed_package():
    root = resources.files("la_edge.faces.web")
    assert "la_edge" in str(root) and all(root.joinpath(name).is_file() for name in ASSETS)


def test_routes_serve_only_the_assets_with_their_types():
    app = FastAPI()
    mount_web(app)
    with TestClient(app) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert 'src="web/app.js"' in page.text and "script-src 'self'" in page.headers["content-security-policy"]
        assert c.get("/web/app.js").headers["content-type"] == "text/javascript; charset=utf-8"
        assert c.get("/web/style.css").headers["content-type"] == "text/css; charset=utf-8"
        for path in ["/web/__init__.py", "/web/..%2F__init__.py", "/web/%2e%2e%2fserver.py", "/web/../server.py",
                     "/web/", "/web/nope.js", "/web/index.html/x"]:
            assert c.get(path).status_code == 404, path


# ---- browser fixtures ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright missing: pip install playwright")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(browser, model_path):
    steering = Steering("smollm2", {"french": PrincipleSpec.one("Answer in French.", 3.0)})
    with running_server(model_path, server_kw={"api_key": API_KEY, "steering": steering}, n_ctx=1024, max_requests=2, max_queue=2,
                        n_threads=1) as srv:
        yield srv


@pytest.fixture()
def page(browser, server):
    assert wait_idle(server.la)
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))  # uncaught exceptions in app.js
    pg.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    pg.set_default_timeout(WAIT_MS)
    pg.goto(server.base + "/")
    yield pg
    ctx.close()
    assert not errors


def configure(pg, key=API_KEY, principle=None, ratio_steps=0, max_tokens=16, compare=False):
    """Fill the settings as a user would; ratio_steps moves the slider by 0.5 per ArrowRight."""
    pg.fill("#api-key", key)
    pg.fill("#temperature", "0")
    pg.fill("#max-tokens", str(max_tokens))
    if principle is not None:
        pg.fill("#principle", principle)
    for _ in range(ratio_steps):
        pg.press("#ratio", "ArrowRight")
    if compare:
        pg.check("#compare")


def send(pg, text):
    pg.fill("#input", text)
    pg.press("#input", "Enter")


def wait_done(pg, answers):
    pg.wait_for_function(f"() => !document.body.classList.contains('busy') && "
                         f"document.querySelectorAll('.assistant').length >= {answers}", timeout=WAIT_MS)


def saved(pg):
    return pg.evaluate(f"() => JSON.parse(localStorage.getItem('{STORE}'))")


def chat_requests(pg):
    seen = []
    pg.on("request", lambda r: seen.append(r) if r.url.endswith("/v1/chat/completions") else None)
    return seen


# ---- browser tests ---------------------------------------------------------------------------
def test_send_streams_an_answer(page, server):
    configure(page)
    page.wait_for_function("() => document.getElementById('model').value === 'smollm2'")
    sent = chat_requests(page)
    send(page, "What is rain?")
    assert page.input_value("#input") == ""  # Enter sent it
    wait_done(page, 1)
    answer = saved(page)["turns"][0]["answers"][0]
    assert answer["kind"] == "plain" and answer["text"] and not answer.get("error")
    # The same request without streaming gives the same greedy text.
    body = json.loads(sent[0].post_data)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    plain = httpx.post(server.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                       json={**body, "stream": False, "stream_options": None}, timeout=60).json()
    assert answer["text"] == plain["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]
    stats = page.text_content(".assistant .stats")
    assert re.fullmatch(r"\d+ tokens( · [\d.]+ tok/s)? · first token \d+ ms", stats), stats
    assert page.text_content(".msg.user") == "What is rain?"


def test_principle_and_ratio_reach_the_request(page):
    configure(page, principle="Answer in French.", ratio_steps=3)
    assert page.text_content("#ratio-value") == "3.5"
    sent = chat_requests(page)
    send(page, "Name a colour.")
    wait_done(page, 1)
    body = json.loads(sent[0].post_data)
    assert body["principle"] == "Answer in French." and body["alignment_ratio"] == 3.5
    assert not {"principles", "avoid", "ratio_schedule"} & set(body)  # one row: the request of today
    assert body["temperature"] == 0 and body["max_tokens"] == 16
    assert body["messages"] == [{"role": "user", "content": "Name a colour."}]
    assert sent[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert "ratio 3.5" in page.text_content(".assistant .label")


def test_compare_streams_both_columns_at_once(page):
    configure(page, principle="Answer in French.", compare=True)
    sent, finished = chat_requests(page), []
    page.on("requestfinished", lambda r: finished.append(len(sent)))
    send(page, "What is the capital of France?")
    wait_done(page, 2)
    assert len(sent) == 2 and finished[0] == 2  # the second request left before the first answer ended
    plain, aligned = [json.loads(r.post_data) for r in sent]
    assert "principle" not in plain and aligned["principle"] == "Answer in French."
    for kind in ("plain", "aligned"):
        assert page.text_content(f".assistant.{kind} .body").strip()
        assert "tokens" in page.text_content(f".assistant.{kind} .stats")
    answers = saved(page)["turns"][0]["answers"]
    assert [a["kind"] for a in answers] == ["plain", "aligned"] and answers[0]["text"] != answers[1]["text"]


def test_model_picker_sends_a_preset_by_name(page, server):
    configure(page)
    page.wait_for_function("() => document.getElementById('model').options.length === 2")
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == ["smollm2", "smollm2:french"]
    page.select_option("#model", "smollm2:french")
    page.check("#compare")  # a preset is enough to compare
    sent = chat_requests(page)
    send(page, "Name a colour.")
    wait_done(page, 2)
    plain, aligned = [json.loads(r.post_data) for r in sent]
    assert plain["model"] == "smollm2" and aligned["model"] == "smollm2:french"
    assert not {"principle", "principles"} & (set(plain) | set(aligned))  # the model name carries it
    assert page.text_content(".assistant.aligned .label") == "Aligned · preset smollm2:french"
    direct = httpx.post(server.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                        json={**aligned, "model": "smollm2", "principle": "Answer in French.", "alignment_ratio": 3.0,
                              "stream": False, "stream_options": None}, timeout=60).json()
    assert saved(page)["turns"][0]["answers"][1]["text"] == direct["choices"][0]["message"]["content"]
    page.reload()  # the choice is kept
    page.wait_for_function("() => document.getElementById('model').value === 'smollm2:french'")


def add_principle(pg, text, ratio_steps=0):
    """Add a principle row; negative ratio_steps move its slider down by 0.5 each."""
    pg.click("#add-principle")
    row = pg.locator("#more-principles .principle-row").last
    row.locator("textarea").fill(text)
    for _ in range(abs(ratio_steps)):
        row.locator("input[type=range]").press("ArrowRight" if ratio_steps > 0 else "ArrowLeft")
    return row


def test_two_principles_and_avoid_reach_the_request(page, server):
    configure(page, principle="Answer in French.")
    add_principle(page, "Be brief.", ratio_steps=-2)
    page.fill("#avoid", "Use English words.")
    page.press("#avoid-ratio", "ArrowLeft")
    assert page.text_content("#avoid-ratio-value") == "1.5"
    sent = chat_requests(page)
    send(page, "Name a colour.")
    wait_done(page, 1)
    body = json.loads(sent[0].post_data)
    assert body["principles"] == [{"text": "Answer in French.", "ratio": 2}, {"text": "Be brief.", "ratio": 1}]
    assert body["avoid"] == [{"text": "Use English words.", "ratio": 1.5}]
    assert not {"principle", "alignment_ratio", "ratio_schedule"} & set(body)
    assert page.text_content(".assistant.aligned .body").strip() and not page.query_selector(".note.error")
    label = page.text_content(".assistant .label")
    assert "“Be brief.” (ratio 1)" in label and "avoid “Use English words.”" in label
    full = httpx.post(server.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                      json={**body, "stream": False, "stream_options": None, "max_tokens": 2}, timeout=60).json()
    assert len(full["la_edge"]["prompts"]["branches"]) == 4  # plain, two principles, one to avoid


def test_removing_a_row_sends_the_rows_left(page):
    bodies = []
    page.route("**/v1/chat/completions", lambda route: (bodies.append(json.loads(route.request.post_data)),
                                                        route.fulfill(status=200, content_type="text/event-stream",
                                                                      body=sse("Oui."))))
    configure(page, principle="Answer in French.")
    add_principle(page, "Be brief.")
    add_principle(page, "Be kind.", ratio_steps=2)
    page.locator("#more-principles .principle-row").first.locator(".remove").click()
    assert page.locator("#more-principles textarea").evaluate_all("ts => ts.map(t => t.value)") == ["Be kind."]
    page.reload()  # the rows persist
    assert page.locator("#more-principles textarea").evaluate_all("ts => ts.map(t => t.value)") == ["Be kind."]
    send(page, "Hi")
    wait_done(page, 1)
    assert bodies[-1]["principles"] == [{"text": "Answer in French.", "ratio": 2}, {"text": "Be kind.", "ratio": 3}]
    page.locator("#more-principles .remove").click()
    assert page.query_selector_all("#more-principles .principle-row") == []
    send(page, "Again")
    wait_done(page, 2)
    assert bodies[-1]["principle"] == "Answer in French." and bodies[-1]["alignment_ratio"] == 2
    assert "principles" not in bodies[-1] and saved(page)["turns"][1]["answers"][0]["text"] == "Oui."


def test_avoid_alone_is_guidance_and_a_bad_scale_is_refused_in_the_page(page):
    bodies = []
    page.route("**/v1/chat/completions", lambda route: (bodies.append(json.loads(route.request.post_data)),
                                                        route.fulfill(status=200, content_type="text/event-stream",
                                                                      body=sse("No."))))
    configure(page)
    page.fill("#avoid", "Use English words.")
    send(page, "Hi")
    wait_done(page, 1)
    assert bodies[-1]["avoid"] == [{"text": "Use English words.", "ratio": 2}] and "principles" not in bodies[-1]
    page.fill("#avoid", "")
    page.fill("#negative", "Talk about cats.")
    page.fill("#cfg-scale", "0.5")
    send(page, "Again")
    assert "guidance scale must be a number in [1, 101]" in page.text_content("#status") and len(bodies) == 1
    page.fill("#cfg-scale", "1")  # 1 = off, as TabbyAPI: a plain request
    send(page, "Again")
    wait_done(page, 2)
    assert "avoid" not in bodies[-1] and page.text_content(".assistant.plain .label") == "Plain (no guidance)"


def test_adaptive_without_guidance_is_refused_in_the_page(page):
    configure(page)
    page.check("#adaptive")
    send(page, "Hi")
    assert "scales guidance" in page.text_content("#status") and page.query_selector_all(".msg") == []


def test_adaptive_switch_sends_an_adaptive_schedule(page):
    configure(page, principle="Answer in French.", compare=True)
    page.check("#adaptive")
    sent = chat_requests(page)
    send(page, "Name a colour.")
    wait_done(page, 2)
    plain, aligned = [json.loads(r.post_data) for r in sent]
    assert aligned["ratio_schedule"] == "adaptive" and aligned["principles"] == [{"text": "Answer in French.",
                                                                                   "ratio": 2}]
    assert not {"principle", "principles", "ratio_schedule"} & set(plain)
    assert page.text_content(".assistant.aligned .body").strip() and not page.query_selector(".note.error")
    assert "adaptive" in page.text_content(".assistant.aligned .label")
    assert saved(page)["settings"]["adaptive"] is True


def test_stop_cancels_the_stream_and_frees_the_engine(page, server):
    configure(page, max_tokens=400)
    send(page, "Write a long story about a dragon who learns to bake bread.")
    page.wait_for_function("() => document.querySelector('.assistant .body').textContent.length > 0")
    page.click("#stop")
    wait_done(page, 1)
    assert page.text_content(".assistant .note") == "Stopped."
    answer = saved(page)["turns"][0]["answers"][0]
    assert answer["stopped"] and "usage" not in answer
    end = time.time() + 10
    while server.la.engine.leaked_sequences() != [] and time.time() < end:
        time.sleep(0.05)
    assert server.la.engine.leaked_sequences() == []


def test_reload_keeps_the_conversation_and_export_downloads_it(page):
    configure(page, principle="Be brief.")
    send(page, "Say hello.")
    wait_done(page, 1)
    before = page.text_content("#conversation")
    page.reload()
    page.wait_for_selector(".assistant")
    assert page.text_content("#conversation") == before
    assert page.input_value("#principle") == "Be brief." and page.input_value("#api-key") == API_KEY
    with page.expect_download() as info:
        page.click("#export")
    exported = json.loads(Path(info.value.path()).read_text())
    assert exported["turns"] == saved(page)["turns"] and exported["turns"][0]["user"] == "Say hello."
    page.click("#new-chat")
    assert page.query_selector_all(".msg") == [] and saved(page)["turns"] == []


def test_wrong_api_key_shows_the_401(page):
    configure(page, key="wrong")
    send(page, "Hello?")
    wait_done(page, 1)
    note = page.text_content(".assistant .note.error")
    assert "401" in note and "API key" in note


def test_context_overflow_shows_a_readable_message(page):
    configure(page)
    send(page, "word " * 1200)
    wait_done(page, 1)
    assert "Too long for the model's context" in page.text_content(".assistant .note.error")


@pytest.mark.parametrize("failure, shown", [
    ({"status": 429, "headers": {"Retry-After": "1"}, "content_type": "application/json",
      "body": json.dumps({"error": {"message": "too many requests", "type": "rate_limit_error", "param": None,
                                    "code": "busy"}})}, "busy (429): too many requests. Try again in 1 s."),
    ({"status": 503, "content_type": "application/json",
      "body": json.dumps({"error": {"message": "engine stopped", "type": "server_error", "param": None,
                                    "code": "engine_unavailable"}})}, "cannot generate (503): engine stopped"),
    ({"status": 200, "content_type": "text/event-stream",
      "body": 'data: {"error": {"message": "boom", "type": "server_error"}}\n\n'}, "failed mid-stream: boom"),
    ({"status": 200, "content_type": "text/event-stream", "body": 'data: {"choices": []}\n\n'}, "ended before"),
    (None, "Network error"),
])
def test_failures_show_in_the_conversation(page, failure, shown):
    if failure is None:
        page.route("**/v1/chat/completions", lambda route: route.abort("connectionrefused"))
    else:
        page.route("**/v1/chat/completions", lambda route: route.fulfill(**failure))
    configure(page)
    send(page, "Hi")
    wait_done(page, 1)
    assert shown in page.text_content(".assistant .note.error")


def sse(*texts):
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} for t in texts]
    events += [{"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(texts), "total_tokens": 5}}]
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def test_model_html_renders_as_text(page):
    hostile = ["Some **bold** and `<b>code</b>` <script>window.__pwned = 1</script>",
               '\n\n<img src=x onerror="window.__pwned = 2">',
               "\n\n- item <iframe src=javascript:alert(1)></iframe>",
               "\n\n```html\n<script>window.__pwned = 3</script>\n```"]
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, content_type="text/event-stream", body=sse(*hostile)))
    configure(page)
    send(page, "Show me some HTML.")
    wait_done(page, 1)
    for _ in range(2):  # as streamed, then as restored from localStorage
        body = page.query_selector(".assistant .body")
        tags = set(page.eval_on_selector(".assistant .body", "b => [...b.querySelectorAll('*')].map(e => e.tagName)"))
        assert tags <= ANSWER_TAGS and {"STRONG", "CODE", "PRE", "UL"} <= tags, tags
        text = body.text_content()
        assert "<script>window.__pwned = 1</script>" in text and '<img src=x onerror="window.__pwned = 2">' in text
        assert page.text_content(".assistant .body code") == "<b>code</b>"
        assert page.evaluate("() => window.__pwned") is None
        page.reload()
        page.wait_for_selector(".assistant")


def test_negative_prompt_compares_plain_and_guided(page, server):
    configure(page, max_tokens=8, compare=True)
    page.fill("#negative", "Talk about cats.")
    assert page.input_value("#cfg-scale") == "3"
    sent = chat_requests(page)
    send(page, "What is a good pet?")
    wait_done(page, 2)
    plain, guided = [json.loads(r.post_data) for r in sent]
    assert guided["avoid"] == [{"text": "Talk about cats.", "ratio": 2}]  # --negative TEXT at --cfg-scale 3
    assert not {"avoid", "principles", "principle", "documents"} & set(plain)
    assert page.text_content(".assistant.aligned .label") == "Guided · negative “Talk about cats.” (scale 3)"
    answers = saved(page)["turns"][0]["answers"]
    assert all(a["text"] and not a.get("error") for a in answers) and not page.query_selector(".note.error")
    direct = httpx.post(server.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                        json={**guided, "stream": False, "stream_options": None}, timeout=60).json()
    assert answers[1]["text"] == direct["choices"][0]["message"]["content"] != answers[0]["text"]


def drop_file(pg, name, text):
    """Drop a file on the document zone as a user's drag from the desktop does (a DataTransfer holding it)."""
    pg.evaluate("""([name, text]) => {
        const data = new DataTransfer();
        data.items.add(new File([text], name, { type: "text/plain" }));
        const zone = document.getElementById("doc-drop");
        for (const type of ["dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
        }
    }""", [name, text])


def test_documents_pasted_dropped_and_refused(page, server):
    pasted = "The tower of Zorb is in the city of Plinth."
    configure(page, max_tokens=8)
    page.fill("#doc-paste", pasted)
    page.click("#add-document")
    drop_file(page, "notes.txt", "Zorb's tower is 300 m tall.")
    page.wait_for_function("() => document.querySelectorAll('#documents li').length === 2")
    page.set_input_files("#doc-file", files=[
        {"name": "photo.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"},
        {"name": "huge.txt", "mimeType": "text/plain", "buffer": b"word " * 60_000}])
    page.wait_for_function("() => document.getElementById('doc-message').textContent.includes('huge.txt')")
    message = page.text_content("#doc-message")
    assert "photo.png is not a text file" in message and "huge.txt is too large" in message
    drop_file(page, "extra.txt", "To be removed.")
    page.wait_for_function("() => document.querySelectorAll('#documents li').length === 3")
    page.click("#documents li:nth-child(3) .remove")
    assert page.locator("#documents .doc-name").all_text_contents() == ["pasted text 1", "notes.txt"]
    page.fill("#document-ratio", "2")
    sent = chat_requests(page)
    send(page, "Where is the tower of Zorb?")
    wait_done(page, 1)
    body = json.loads(sent[0].post_data)
    assert body["documents"] == [pasted, "Zorb's tower is 300 m tall."] and body["document_ratio"] == 2
    assert not {"principle", "principles", "avoid"} & set(body)
    assert page.text_content(".assistant .body").strip() and not page.query_selector(".note.error")
    assert page.text_content(".assistant .label") == "Guided · 2 documents: pasted text 1, notes.txt (ratio 2)"
    page.reload()  # the documents persist
    assert page.locator("#documents .doc-name").all_text_contents() == ["pasted text 1", "notes.txt"]


def test_server_400_names_the_field(page):
    configure(page, principle="Be brief.")
    page.fill("#doc-paste", "The tower of Zorb is in the city of Plinth.")
    page.click("#add-document")
    send(page, "Where is the tower?")
    wait_done(page, 1)
    note = page.text_content(".assistant .note.error")
    assert note.startswith("Error 400: documents:") and "without principles" in note, note
    page.fill("#principle", "")
    page.fill("#document-ratio", "500")
    send(page, "Where is the tower?")
    wait_done(page, 2)
    note = page.locator(".assistant .note.error").last.text_content()
    assert note.startswith("Error 400: document_ratio:") and "500" in note, note


@pytest.mark.skipif(not os.environ.get("LA_EDGE_WEB_SCREENSHOT"), reason="set LA_EDGE_WEB_SCREENSHOT=PATH")
def test_compare_screenshot(page):
    configure(page, principle="Answer in French.", max_tokens=60, compare=True)
    send(page, "Why is the sky blue?")
    wait_done(page, 2)
    page.screenshot(path=os.environ["LA_EDGE_WEB_SCREENSHOT"])


def test_no_web_serves_only_the_api(model_path):
    from fastapi.testclient import TestClient

    with Aligner.load(model_path, n_ctx=256, n_threads=1) as la:
        for web, status in ((False, 404), (True, 200)):
            client = TestClient(Server(la, model_name="m", web=web).app)
            assert client.get("/").status_code == status
            assert client.get("/health").status_code == 200


def test_typing_writes_the_saved_state_once_per_pause_and_a_reload_keeps_it(page):
    page.evaluate("""() => { window.__writes = 0; const set = Storage.prototype.setItem;
        Storage.prototype.setItem = function (k, v) {
            if (k === '%s') window.__writes++;
            return set.call(this, k, v);
        }; }""" % STORE)
    page.locator("#principle").press_sequentially("Answer in French, please.", delay=5)  # 25 keystrokes
    page.wait_for_function(f"() => ((JSON.parse(localStorage.getItem('{STORE}')) || {{}}).settings || {{}})"
                           ".principle === 'Answer in French, please.'", timeout=WAIT_MS)
    assert 1 <= page.evaluate("() => window.__writes") <= 3  # once per pause (a loaded machine may pause)
    page.locator("#principle").press_sequentially(" Thanks.", delay=5)
    page.reload()  # within the pause: pagehide writes it
    assert page.locator("#principle").input_value() == "Answer in French, please. Thanks."
