"""The browser page at GET / (server/page.html) in a real browser: Debian's chromium, headless, through selenium
(the `browser` fixture of test_lens_page.py, which skips only when chromium or chromedriver is not installed).

Against the real server on the tiny model: the text streamed onto the page is the text the API gives for the same
request without streaming, one coloured element per token, each with its alternatives. Against streams written
here as the API defines them (window.fetch replaced in the page): tokens that are parts of a character, text held
back and let out later, markup in tokens, errors before and during the stream.
"""
import json
import math
import re
import urllib.error
import urllib.request

import pytest

import lens_html
import utils
from conftest import ROOT
from test_lens_page import browser  # noqa: F401 (a fixture)

PAGE = ROOT / "server" / "page.html"
# The --html page's colours (GLTR's), as the browser reports them: {"r10": "rgba(183, 240, 177, 1)", ...}
COLOURS = {name: "rgba({}, {}, {}, 1)".format(*bytes.fromhex(hex_))
           for name, hex_ in re.findall(r"\.(r\w+) \{ background: #(\w{6}) \}", lens_html.TEMPLATE)}


def test_the_page_is_self_contained_and_coloured_as_the_html_page_is():
    text = PAGE.read_text(encoding="utf-8")
    assert sorted(COLOURS) == ["r10", "r100", "r1000", "rmore"]
    for name, rgba in COLOURS.items():
        assert f".{name} {{ background: #{bytes(map(int, rgba[5:-4].split(', '))).hex()} }}" in text
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    assert re.findall(r"https?:|//[\w.-]+\.\w", text) == []  # no address of another host
    assert re.findall(r"\b(?:src|href)\s*=\s*\"(?!data:)|@import|url\(|innerHTML|outerHTML|insertAdjacentHTML|document\.write",
                      text) == []  # nothing loaded from elsewhere, and no text read as HTML
    assert re.findall(r"fetch\(([^,]+),", text) == ['"v1/completions"']  # its own server's API, and nothing else


# ---- against the real server

@pytest.fixture(scope="module")
def tiny(checkpoints):
    models_dir, model_size, *_ = checkpoints["tiny"]
    return utils.load_encoder_hparams_and_params(model_size, models_dir)  # encoder, hparams, params


@pytest.fixture(scope="module")
def server(tiny):
    from serving import serving

    with serving(*tiny, name="tiny") as running:
        yield running


def post(server, body):
    """The API's answer to `body`, without the page: (status, JSON)."""
    request = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def open_page(browser, url):
    browser.get(url)
    browser.get_log("browser")  # read, so that only what this test does is left in it
    assert browser.execute_script("return [document.body.dataset.ready, document.body.dataset.state]") == ["yes", "idle"]


def fill(browser, **fields):
    for name, value in fields.items():
        box = browser.find_element("id", name)
        box.clear()
        box.send_keys(str(value))


def generate(browser):
    """Submit the form and wait until the stream has ended; the page's data-state then ("done", "error"...)."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element("id", "submit").click()
    return WebDriverWait(browser, 60).until(lambda b: b.execute_script(
        "const s = document.body.dataset.state; return s !== 'idle' && s !== 'streaming' && s"))


def assert_no_script_errors(browser, failed_requests=0):
    """No script error; the browser logs each HTTP error status too, as a SEVERE entry from the network."""
    assert browser.execute_script("return window.pageErrors") == []
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert [e for e in severe if e["source"] != "network"] == [] and len(severe) == failed_requests, severe


def shown(token):
    """A token as the page writes it: as it is for "bytes:\\x..", else JSON.stringify's quoted string."""
    return token if token.startswith("bytes:") else json.dumps(token, ensure_ascii=False)


def bucket(token, logprob, top):
    """The page's colour for a token, worked out here from the same log-probs: its rank when it is in the top
    log-probs; else the bound 5 + m / p on its rank, m the probability the top 5 leave (see the page's legend)."""
    if token in top:
        rank = 1 + sum(v > top[token] for v in top.values())
    else:
        rest = max(0.0, 1 - sum(math.exp(v) for v in top.values()))
        rank = len(top) + max(1, math.floor(rest / math.exp(logprob)))
    return "r10" if rank <= 10 else "r100" if rank <= 100 else "r1000" if rank <= 1000 else "rmore"


def check_tokens(browser, logprobs):
    """One coloured element per token, in the colour its log-probs give it; clicking one lists its top_logprobs."""
    spans = browser.find_elements("css selector", "#completion .tok")
    assert len(spans) == len(logprobs["tokens"]) > 0
    expected = [bucket(*entry) for entry in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"])]
    assert [s.get_attribute("class").split()[1] for s in spans] == expected
    assert [s.value_of_css_property("background-color") for s in spans] == [COLOURS[b] for b in expected]
    for i in {0, len(spans) - 1}:
        spans[i].click()
        rows = browser.find_elements("css selector", "#alternatives tr")
        top = sorted(logprobs["top_logprobs"][i].items(), key=lambda item: -item[1])
        assert [r.find_element("css selector", "td").get_attribute("textContent") for r in rows] == [shown(t) for t, _ in top]
        assert [r.get_attribute("class") == "chosen" for r in rows] == [t == logprobs["tokens"][i] for t, _ in top]
        assert "picked" in spans[i].get_attribute("class")
    return spans


def test_greedy_text_streams_onto_the_page_as_the_api_gives_it(browser, server):
    open_page(browser, server.url + "/")
    prompt = "The quick brown fox </script><b>&amp; ünïcode 😀"
    fill(browser, prompt=prompt, max_tokens=24, temperature=0, top_p=1)
    browser.find_element("id", "top_k").clear()
    assert generate(browser) == "done"
    assert browser.find_element("id", "problem").get_attribute("hidden") is not None
    status, answer = post(server, {"prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 5})
    assert status == 200
    choice = answer["choices"][0]
    assert browser.find_element("id", "completion").get_attribute("textContent") == choice["text"]
    assert browser.find_element("id", "shown-prompt").get_attribute("textContent") == prompt
    assert browser.find_elements("css selector", "#text b") == []  # text, never markup
    spans = check_tokens(browser, choice["logprobs"])
    assert all(s.get_attribute("title").endswith(", rank 1") for s in spans)  # greedy: every token ranks first
    assert f"finish_reason: {choice['finish_reason']}" in browser.find_element("id", "status").text
    # every request the page made went to its own server
    assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == [
        server.url + "/v1/completions"]
    assert_no_script_errors(browser)


def test_sampled_text_streams_as_the_api_gives_it_with_every_colour_it_earns(browser, server):
    open_page(browser, server.url + "/")
    body = {"prompt": "Once upon a time", "max_tokens": 60, "temperature": 2, "top_p": 1, "seed": 7}
    fill(browser, **body)
    browser.find_element("id", "top_k").clear()
    assert generate(browser) == "done"
    status, answer = post(server, {**body, "logprobs": 5})
    assert status == 200
    choice = answer["choices"][0]
    assert browser.find_element("id", "completion").get_attribute("textContent") == choice["text"]
    spans = check_tokens(browser, choice["logprobs"])
    outside = [s for s in spans if "outside the top 5" in s.get_attribute("title")]  # at temperature 2, some are
    assert outside and {s.get_attribute("class").split()[1] for s in outside} >= {"r100", "rmore"}
    assert_no_script_errors(browser)


def test_the_servers_http_error_is_shown(browser, server):
    open_page(browser, server.url + "/")
    fill(browser, prompt="Hello", max_tokens=10_000)
    assert generate(browser) == "error"
    status, answer = post(server, {"prompt": "Hello", "max_tokens": 10_000, "stream": True})
    assert status == 400
    assert browser.find_element("id", "problem").text == f"HTTP 400 Bad Request: {answer['error']['message']}"
    assert browser.find_elements("css selector", "#completion .tok") == []
    assert_no_script_errors(browser, failed_requests=1)


def test_an_error_after_the_stream_began_is_shown_with_the_text_before_it(browser, server, monkeypatch):
    def stepped(job):  # the engine breaks down after its fourth step, when four tokens have gone out
        if job.steps == 4:
            raise RuntimeError("the engine broke down")

    monkeypatch.setattr(server.engine, "stepped", stepped)
    open_page(browser, server.url + "/")
    fill(browser, prompt="Hello", max_tokens=20, temperature=0)
    browser.find_element("id", "top_k").clear()
    assert generate(browser) == "error"
    assert "the server failed on this request: RuntimeError: the engine broke down" in browser.find_element("id", "problem").text
    assert len(browser.find_elements("css selector", "#completion .tok")) == 4
    assert_no_script_errors(browser)


def test_the_text_shows_as_it_is_generated_and_stop_ends_the_request(browser, server):
    from selenium.webdriver.support.ui import WebDriverWait
    from serving import WAIT, Gate

    gate = Gate(server.engine, at_step=2)  # the engine waits after its second step until the gate opens
    try:
        open_page(browser, server.url + "/")
        fill(browser, prompt="Hello", max_tokens=20, temperature=0)
        browser.find_element("id", "top_k").clear()
        browser.find_element("id", "submit").click()
        assert gate.reached.wait(WAIT)
        WebDriverWait(browser, WAIT).until(lambda b: len(b.find_elements("css selector", "#completion .tok")) == 2)
        assert browser.execute_script("return document.body.dataset.state") == "streaming"
        assert browser.find_element("id", "submit").get_attribute("disabled") is not None
        browser.find_element("id", "cancel").click()
        WebDriverWait(browser, WAIT).until(lambda b: b.execute_script("return document.body.dataset.state") == "stopped")
        assert browser.find_element("id", "status").text == "stopped after 2 tokens"
        assert gate.jobs[0].cancelled.wait(WAIT)  # the server saw the page leave, and stops the work
    finally:
        gate.close()
    assert browser.find_element("id", "problem").get_attribute("hidden") is not None
    assert_no_script_errors(browser)


def test_the_api_key_is_sent_as_a_bearer_token(browser, tiny):
    from serving import serving

    with serving(*tiny, name="tiny", api_key="sk-test") as keyed:
        open_page(browser, keyed.url + "/")  # the page itself needs no key
        fill(browser, prompt="Hello", max_tokens=3)
        assert generate(browser) == "error"
        assert browser.find_element("id", "problem").text.startswith("HTTP 401 Unauthorized: a valid API key is needed")
        fill(browser, api_key="sk-test")
        assert generate(browser) == "done"
        assert len(browser.find_elements("css selector", "#completion .tok")) == 3
        assert browser.find_element("id", "problem").get_attribute("hidden") is not None
        assert_no_script_errors(browser, failed_requests=1)


# ---- against streams written here: the page's own file, window.fetch replaced by one that answers with them

FAKE_FETCH = """
const [status, body, pieceSize] = arguments;
window.fetch = async (url, init) => {  // the request is kept for the test; the body arrives in pieces of pieceSize bytes
  window.sent = {url: String(url), method: init.method, headers: init.headers, body: JSON.parse(init.body)};
  const bytes = new TextEncoder().encode(body), pieces = [];
  for (let i = 0; i < bytes.length; i += pieceSize) pieces.push(bytes.slice(i, i + pieceSize));
  const stream = new ReadableStream({start(c) { pieces.forEach(p => c.enqueue(p)); c.close(); }});
  const type = status === 200 ? "text/event-stream" : "application/json";
  return new Response(stream, {status, statusText: status === 200 ? "OK" : "Bad Request", headers: {"Content-Type": type}});
};
"""


def event(data):
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def chunk(text, tokens=(), finish_reason=None):
    """A stream's chunk: its text and its tokens, each (token, logprob, {top token: logprob})."""
    logprobs = {"tokens": [t for t, _, _ in tokens], "token_logprobs": [lp for _, lp, _ in tokens],
                "top_logprobs": [top for _, _, top in tokens], "text_offset": [0] * len(tokens)}
    return event({"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "tiny",
                  "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]})


def top(*names):  # top log-probs: the five names with probabilities 0.3, 0.1, 0.05, 0.03, 0.02
    return {name: math.log(p) for name, p in zip(names, [0.3, 0.1, 0.05, 0.03, 0.02])}


OTHERS = ("a", "b", "c", "d", "e")
# The top 5 hold 0.5, so a token outside them ranks at most 5 + 0.5 / p: 28 at p = 0.021, 126 at 0.0041, 50005 at 1e-5.
TOKENS = [
    (" Hello", math.log(0.3), top(" Hello", *OTHERS)),  # rank 1
    (" <b>", math.log(0.05), top("a", "b", " <b>", "c", "d")),  # rank 3
    ("bytes:\\xf0\\x9f", math.log(0.021), top(*OTHERS)),  # two tokens of one character: 😀 = f0 9f 98 80
    ("bytes:\\x98\\x80", math.log(0.0041), top(*OTHERS)),
    (" &amp;</script>", math.log(1e-5), top(*OTHERS)),
    ("\n", math.log(0.3), top("\n", *OTHERS)),  # held back (it might begin a stop string), let out at the end
]
STREAM = (chunk(" Hello <b>", TOKENS[:2]) + chunk("", TOKENS[2:3]) + chunk("\U0001F600", TOKENS[3:4])
          + chunk(" &amp;</script>", TOKENS[4:5]) + chunk("", TOKENS[5:]) + chunk("\n") + chunk("", finish_reason="length")
          + ": a comment line\n\n" + "data: [DONE]\n\n")


@pytest.mark.parametrize("piece_size", [1, 7, 100_000])
def test_a_stream_of_character_parts_held_back_text_and_markup(browser, piece_size):
    open_page(browser, PAGE.as_uri())
    browser.execute_script(FAKE_FETCH, 200, STREAM, piece_size)
    fill(browser, prompt="Hi <i>", max_tokens=6, temperature=0.5, top_p=0.9, top_k=7, seed=3, stop="\\n\\n", api_key="sk-1")
    assert generate(browser) == "done"
    sent = browser.execute_script("return window.sent")
    assert sent == {"url": "v1/completions", "method": "POST",
                    "headers": {"Content-Type": "application/json", "Authorization": "Bearer sk-1"},
                    "body": {"prompt": "Hi <i>", "stream": True, "logprobs": 5, "max_tokens": 6, "temperature": 0.5,
                             "top_p": 0.9, "top_k": 7, "seed": 3, "stop": ["\n\n"]}}
    spans = browser.find_elements("css selector", "#completion .tok")
    assert [s.get_attribute("textContent") for s in spans] == [" Hello", " <b>", "", "\U0001F600", " &amp;</script>", "\n"]
    assert browser.find_element("id", "completion").get_attribute("textContent") == " Hello <b>\U0001F600 &amp;</script>\n"
    assert browser.find_elements("css selector", "#text b, #text i") == []
    assert [s.get_attribute("class").split()[1] for s in spans] == ["r10", "r10", "r100", "r1000", "rmore", "r10"]
    assert [bucket(*t) for t in TOKENS] == ["r10", "r10", "r100", "r1000", "rmore", "r10"]  # the test's own reckoning agrees
    assert spans[2].size["width"] > 0  # a token with no text of its own can still be seen and clicked
    assert "rank 3" in spans[1].get_attribute("title") and "rank at most 126" in spans[3].get_attribute("title")
    spans[2].click()
    assert browser.find_element("css selector", "#details p").text.startswith("bytes:\\xf0\\x9f: probability 2.1%, outside the top 5")
    assert "finish_reason: length" in browser.find_element("id", "status").text
    browser.find_element("id", "api_key").clear()
    assert generate(browser) == "done" and "Authorization" not in browser.execute_script("return window.sent.headers")
    assert_no_script_errors(browser)


@pytest.mark.parametrize("status, body, message", [
    (200, chunk(" Hello", TOKENS[:1]) + event({"error": {"message": "out of <memory>", "type": "server_error",
                                                         "param": None, "code": None}}) + "data: [DONE]\n\n",
     "the server stopped with an error (server_error): out of <memory>"),
    (200, chunk(" Hello", TOKENS[:1]), "the server closed the stream before its end ([DONE])"),
    (400, json.dumps({"error": {"message": "max_tokens must be <b>a whole number</b>", "type": "invalid_request_error",
                                "param": "max_tokens", "code": None}}),
     "HTTP 400 Bad Request: max_tokens must be <b>a whole number</b>"),
    (400, "not JSON at all", "HTTP 400 Bad Request: not JSON at all"),
], ids=["an error chunk", "no [DONE]", "OpenAI's error object", "not JSON"])
def test_an_error_is_shown_with_the_text_before_it(browser, status, body, message):
    open_page(browser, PAGE.as_uri())
    browser.execute_script(FAKE_FETCH, status, body, 5)
    assert generate(browser) == "error"
    assert browser.find_element("id", "problem").text == message
    assert browser.find_element("id", "completion").get_attribute("textContent") == (" Hello" if status == 200 else "")
    assert browser.find_elements("css selector", "#problem b, #completion b") == []
    assert_no_script_errors(browser)
