"""The server against the official openai client (retries off) and plain HTTP, on 127.0.0.1: every prompt form,
choices, stop strings, seeds, echoed log-probs (equal to score() and to HF's log-softmax), streaming, the
tokenizer routes, bad requests as OpenAI's errors, clients that leave, a full queue, keys, CORS, and
`python gpt2.py --serve` itself. Answers are compared with gpt2.generate on the same weights, in this process.

Where a test needs the engine at a known point (a client leaving mid-generation, a full queue) a Gate holds the
engine after a step until the test has seen what it waits for: the order of events is fixed, not raced.
"""
import concurrent.futures
import json
import math
import signal
import socket
import subprocess
import sys

import numpy as np
import openai
import pytest
import requests
import torch

import gpt2
import utils
from conftest import ROOT, hf_model
from serving import WAIT, Gate, serving, until
from server import protocol
from server.serve import exposure_warning
from textstream import decode_text

EOT = 50256


@pytest.fixture(scope="module")
def tiny(checkpoints):
    models_dir, model_size, _, _ = checkpoints["tiny"]
    return utils.load_encoder_hparams_and_params(model_size, models_dir)


@pytest.fixture(scope="module")
def served(tiny):
    with serving(*tiny) as served:
        yield served


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=WAIT)


def expected(tiny, prompt, n_tokens, stop=(), **options):
    """What one prompt's choices should be: (texts, ids) from gpt2.generate on the same weights."""
    encoder, hparams, params = tiny
    ids = encoder.encode(prompt, allowed_special="all") if isinstance(prompt, str) else prompt
    rows = gpt2.generate([ids], params, hparams["n_head"], n_tokens, eos_token_id=EOT, **options)
    return [decode_text(row, encoder, stop) for row in rows], rows


def test_the_four_prompt_forms(client, tiny):
    encoder = tiny[0]
    texts = ["Alan Turing theorized", "The dog"]
    ids = [encoder.encode(t) for t in texts]
    answers = [expected(tiny, t, 8)[0][0] for t in texts]
    for prompt, want in [(texts[0], answers[:1]), (texts, answers), (ids[0], answers[:1]), (ids, answers)]:
        out = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
        assert [c.text for c in out.choices] == want and [c.index for c in out.choices] == list(range(len(want)))
        assert all(c.finish_reason == "length" for c in out.choices)
        assert out.object == "text_completion" and out.model == "tiny" and out.id.startswith("cmpl-")
        assert out.usage.prompt_tokens == sum(len(encoder.encode(t)) for t in texts[: len(want)])
        assert out.usage.completion_tokens == 8 * len(want) and out.usage.total_tokens == out.usage.prompt_tokens + 8 * len(want)


def test_n_samples_with_a_seed_are_reproducible(client, tiny):
    ask = dict(model="tiny", prompt=["Once upon a time", "The dog"], max_tokens=10, temperature=1.0, n=3, seed=7)
    first, again = client.completions.create(**ask), client.completions.create(**ask)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices] and [c.index for c in first.choices] == list(range(6))
    want = [t for p in ask["prompt"] for t in expected(tiny, p, 10, temperature=1.0, rng=7, num_return_sequences=3)[0]]
    assert texts == want and len(set(texts[:3])) > 1  # prompt by prompt, then sample by sample; samples differ
    other = client.completions.create(**dict(ask, seed=8))
    assert [c.text for c in other.choices] != texts


def test_stop_strings_end_the_text_before_them(client, tiny):
    (text,), _ = expected(tiny, "The dog", 30)
    stop = text[10:14]
    out = client.completions.create(model="tiny", prompt="The dog", max_tokens=30, temperature=0, stop=[stop, "never"])
    (choice,) = out.choices
    assert choice.text == text[: text.index(stop)] and choice.finish_reason == "stop"
    assert client.completions.create(model="tiny", prompt="The dog", max_tokens=30, temperature=0, stop=stop).choices[0].text == choice.text


def test_echoed_logprobs_equal_score_and_hf(client, tiny):
    encoder, hparams, params = tiny
    prompt = "The quick brown fox jumps over the lazy dog"
    ids = encoder.encode(prompt)
    logprobs = gpt2.score(ids, params, hparams["n_head"])
    with torch.no_grad():
        hf = torch.log_softmax(hf_model(hparams, params)(torch.tensor([ids])).logits[0], -1).numpy()
    for max_tokens in (0, 1):
        out = client.completions.create(model="tiny", prompt=ids, max_tokens=max_tokens, temperature=0, echo=True, logprobs=3)
        (choice,) = out.choices
        lp = choice.logprobs
        assert len(lp.tokens) == len(ids) + max_tokens and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert lp.token_logprobs[1 : len(ids)] == [float(x) for x in logprobs]  # the same float32s, exactly
        np.testing.assert_allclose(lp.token_logprobs[1 : len(ids)], hf[np.arange(len(ids) - 1), ids[1:]], rtol=1e-4, atol=1e-4)
        assert lp.tokens[: len(ids)] == [encoder.decode([i]) for i in ids]
        assert lp.text_offset[: len(ids)] == [len(encoder.decode(ids[:i])) for i in range(len(ids))]
        for position, (token, chosen, top) in enumerate(zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]), 1):
            assert len(top) == 3
            want = sorted(hf[position - 1], reverse=True)[:3] if position < len(ids) else None
            if want is not None:
                np.testing.assert_allclose(sorted(top.values(), reverse=True), want, rtol=1e-4, atol=1e-4)
            if token in top:  # lm-eval's is_greedy compares these two with ==
                assert top[token] == chosen
        (greedy,), _ = expected(tiny, ids, 1)
        assert choice.text == prompt + greedy * max_tokens and out.usage.completion_tokens == max_tokens


def test_generated_logprobs_are_the_models(client, tiny):
    encoder, hparams, params = tiny
    ids = encoder.encode("Hello world")
    got, records = gpt2.generate(ids, params, hparams["n_head"], 6, logprobs=2, eos_token_id=EOT)
    out = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0, logprobs=2)
    lp = out.choices[0].logprobs
    assert lp.token_logprobs == [r.logprob for r in records]
    assert lp.top_logprobs == [{protocol.token_text(encoder, i): v for i, v in r.top} for r in records]
    assert lp.tokens == [protocol.token_text(encoder, i) for i in got] and lp.text_offset[0] == 0


def test_streamed_chunks_join_to_the_whole_text(client, served, tiny):
    ask = dict(model="tiny", prompt=["Alan Turing theorized", "The dog"], max_tokens=20, temperature=1.0, n=2, seed=3,
               logprobs=1, echo=True)
    whole = client.completions.create(**ask)
    pieces, finish = {}, {}
    for chunk in client.completions.create(**ask, stream=True, stream_options={"include_usage": True}):
        for choice in chunk.choices:
            pieces.setdefault(choice.index, []).append(choice)
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
        if not chunk.choices:
            usage = chunk.usage
    for choice in whole.choices:
        chunks = pieces[choice.index]
        assert "".join(c.text for c in chunks) == choice.text and finish[choice.index] == choice.finish_reason
        assert sum((c.logprobs.tokens for c in chunks), []) == choice.logprobs.tokens
        assert sum((c.logprobs.token_logprobs for c in chunks), []) == choice.logprobs.token_logprobs
        assert chunks[-1].finish_reason and not any(c.finish_reason for c in chunks[:-1])
    assert usage == whole.usage
    raw = requests.post(served.url + "/v1/completions", json={**ask, "stream": True}, timeout=WAIT)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.content.endswith(b"data: [DONE]\n\n") and raw.content.count(b"data: [DONE]") == 1
    assert all(block.startswith(b"data: ") for block in raw.content.split(b"\n\n") if block)


def test_streamed_text_is_whole_characters(served, tiny):
    encoder = tiny[0]
    emoji = encoder.encode("😀")  # several tokens, each a part of the character
    assert len(emoji) > 1
    body = {"prompt": [emoji[:1]], "max_tokens": 1, "echo": True, "logprobs": 0, "stream": True,
            "logit_bias": {str(emoji[1]): 100}}
    chunks = [json.loads(line[6:]) for line in requests.post(served.url + "/v1/completions", json=body, timeout=WAIT).text.split("\n\n")
              if line.startswith("data: {")]
    texts = [c["choices"][0]["text"] for c in chunks]
    assert "".join(texts) == "😀" and all("\ufffd" not in t for t in texts)
    tokens = sum((c["choices"][0]["logprobs"]["tokens"] for c in chunks), [])
    assert [t.startswith("bytes:\\x") for t in tokens] == [True, True]


def test_openai_penalties_and_logit_bias(client, tiny):
    encoder = tiny[0]
    ids = encoder.encode("The dog")
    (plain,), (plain_ids,) = expected(tiny, ids, 12)
    biased = client.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0,
                                       logit_bias={str(plain_ids[0]): -100})
    (want,), _ = expected(tiny, ids, 12, logit_bias={plain_ids[0]: -100})
    assert biased.choices[0].text == want != plain
    forced = client.completions.create(model="tiny", prompt=ids, max_tokens=4, temperature=0, logit_bias={"464": 100})
    assert forced.choices[0].text == encoder.decode([464] * 4)
    for name in ("presence_penalty", "frequency_penalty"):  # their arithmetic: test_controls.py
        out = client.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=1.0, seed=2, **{name: 2.0})
        (want,), _ = expected(tiny, ids, 12, temperature=1.0, rng=2, **{name: 2.0})
        assert out.choices[0].text == want
    extras = dict(top_k=5, repetition_penalty=1.3, no_repeat_ngram_size=2, min_tokens=3)
    out = client.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0.8, seed=1, extra_body=extras)
    (want,), _ = expected(tiny, ids, 12, temperature=0.8, rng=1, top_k=5, repetition_penalty=1.3, no_repeat_ngram_size=2,
                          min_new_tokens=3)
    assert out.choices[0].text == want


def test_beam_search(client, tiny):
    encoder = tiny[0]
    ids = encoder.encode("The dog")
    out = client.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0, n=2,
                                    extra_body={"num_beams": 3})
    want, _ = expected(tiny, ids, 8, num_beams=3, num_return_sequences=2)
    assert [c.text for c in out.choices] == want


def test_models_and_health(client, served):
    (model,) = client.models.list().data
    assert model.id == "tiny" and client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    assert requests.get(served.url + "/health", timeout=WAIT).json() == {"status": "ok"}


def test_tokenizer_routes(served, tiny):
    encoder = tiny[0]
    text = "Hello <|endoftext|> wörld"
    tokens = requests.post(served.url + "/tokenize", json={"prompt": text, "add_special_tokens": False}, timeout=WAIT).json()
    assert tokens["tokens"] == encoder.encode(text, allowed_special="all") and tokens["count"] == len(tokens["tokens"])
    assert EOT in tokens["tokens"] and tokens["max_model_len"] == 128
    back = requests.post(served.url + "/detokenize", json={"tokens": tokens["tokens"]}, timeout=WAIT).json()
    assert back == {"prompt": text}
    info = requests.get(served.url + "/tokenizer_info", timeout=WAIT).json()
    assert info["eos_token"] == "<|endoftext|>" and info["eos_token_id"] == EOT
    bad = requests.post(served.url + "/detokenize", json={"tokens": [50257]}, timeout=WAIT)
    assert bad.status_code == 400 and "50257" in bad.json()["error"]["message"]


BAD = [
    (dict(prompt=[1, 50257]), openai.BadRequestError, "50257"),
    (dict(prompt="hi", max_tokens=200), openai.BadRequestError, "128"),
    (dict(prompt="hi", logprobs=6), openai.BadRequestError, "logprobs"),
    (dict(prompt="hi", n=17), openai.BadRequestError, "n must be"),
    (dict(prompt="hi", n=2, temperature=0), openai.BadRequestError, "copies of one greedy text"),
    (dict(prompt=[]), openai.BadRequestError, "empty"),
    (dict(prompt=""), openai.BadRequestError, "<|endoftext|>"),
    (dict(prompt="hi", suffix="!"), openai.BadRequestError, "suffix"),
    (dict(prompt="hi", best_of=3), openai.BadRequestError, "best_of"),
    (dict(prompt="hi", max_tokens=0), openai.BadRequestError, "echo"),
    (dict(prompt="hi", temperature="hot"), openai.BadRequestError, "temperature"),
    (dict(prompt="hi", extra_body={"top_k": 0}), openai.BadRequestError, "top_k"),
    (dict(prompt="hi", extra_body={"guided_json": {}}), openai.BadRequestError, "guided_json"),
    (dict(prompt="hi", logit_bias={"x": 1}), openai.BadRequestError, "logit_bias"),
    (dict(prompt="hi", extra_body={"num_beams": 2}, temperature=1), openai.BadRequestError, "temperature 0"),
    (dict(prompt="hi", model="gpt-4"), openai.NotFoundError, "'tiny'"),
]


@pytest.mark.parametrize("ask, error, says", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_openai_errors(client, ask, error, says):
    with pytest.raises(error) as e:
        client.completions.create(**{"model": "tiny", "max_tokens": 4, **ask})
    assert says in e.value.body["message"] and set(e.value.body) == {"message", "type", "param", "code"}
    assert client.completions.create(model="tiny", prompt="hi", max_tokens=2).choices  # and the server goes on


def test_bad_bodies(served):
    url = served.url + "/v1/completions"
    for data, status, says in [(b'{"prompt": "hi",', 400, "not valid JSON"), (b'["hi"]', 400, "JSON object"),
                               (b'{"prompt": "hi", "temperature": NaN}', 400, "not valid JSON"),
                               (b'{"prompt": "' + b"a" * (5 << 20) + b'"}', 413, "over")]:
        answer = requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=WAIT)
        assert answer.status_code == status and says in answer.json()["error"]["message"]
    assert requests.get(url, timeout=WAIT).status_code == 405
    assert requests.get(served.url + "/v2/nothing", timeout=WAIT).json()["error"]["type"] == "not_found_error"


def test_chat_is_refused_with_what_to_use_instead(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert "/v1/completions" in e.value.body["message"] and "chat template" in e.value.body["message"]


def test_minus_infinity_is_sent_as_a_number(tiny):
    choice = protocol.Choice(0, tiny[0], True)
    choice.add([(464, -math.inf, [(464, -math.inf), (1, -1.0)])], "The")
    body = json.dumps(choice.whole(), allow_nan=False)  # would raise on inf
    assert json.loads(body)["logprobs"]["token_logprobs"] == [protocol.NEG_INF]


def test_a_failure_after_the_stream_began_ends_it_with_an_error(client, served, monkeypatch):
    from server.engine import Group

    advance = Group.advance

    def failing(group):  # the first token comes out, then choosing fails, as a server fault would
        if group.step >= 1:
            raise RuntimeError("a fault in the middle")
        return advance(group)

    monkeypatch.setattr(Group, "advance", failing)
    raw = requests.post(served.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 5, "stream": True}, timeout=WAIT)
    blocks = [b for b in raw.text.split("\n\n") if b]
    assert raw.status_code == 200 and blocks[-1] == "data: [DONE]"
    assert "a fault in the middle" in json.loads(blocks[-2][6:])["error"]["message"]
    assert "choices" in json.loads(blocks[0][6:])  # the first token came out before
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model="tiny", prompt="hi", max_tokens=5)
    monkeypatch.undo()
    assert client.completions.create(model="tiny", prompt="hi", max_tokens=2).choices  # healthy


def post_raw(url, body):
    """A socket that has sent a POST of `body` (JSON) to url's /v1/completions."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "waiting"])
def test_a_client_that_leaves_stops_its_generation(tiny, stream):
    with serving(*tiny) as served:
        gate = Gate(served.engine, at_step=1)
        sock = post_raw(served.url, {"prompt": "The dog", "max_tokens": 100, "stream": stream, "ignore_eos": True})
        assert gate.reached.wait(WAIT)  # the engine is held after its first step
        if stream:  # read until the first chunk has come
            received = b""
            while b"data: " not in received:
                received += sock.recv(4096)
        sock.close()
        job = gate.jobs[0]
        assert job.cancelled.wait(WAIT)  # the server saw the client go
        gate.close()
        after = requests.post(served.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=WAIT)
        assert after.status_code == 200 and len(after.json()["choices"]) == 1  # served once the engine let go
        assert job.steps == 1 and served.engine.stats["cancelled"] == 1  # not one step more
        metrics = requests.get(served.url + "/metrics", timeout=WAIT).text
        assert "gpt2_cancelled_total 1" in metrics and "gpt2_requests_total 2" in metrics


def test_eight_clients_at_once_each_get_their_own_answer(client, tiny):
    encoder = tiny[0]
    asks = [dict(prompt=p, max_tokens=12, temperature=t, seed=s, n=n, logprobs=lp, stop=stop)
            for p, t, s, n, lp, stop in [("The dog", 0, None, 1, None, None), ("Alan Turing", 1.0, 1, 2, None, None),
                                         ("Once upon a time", 0.7, 2, 1, 2, None), ("Hello world", 0, None, 1, 1, ["e"]),
                                         ("A B C", 1.2, 3, 3, None, None), ("The cat", 0.3, 6, 2, None, None),
                                         ([464, 3290], 0.9, 4, 1, 0, None), ("Zebra", 0.5, 5, 1, None, [" the"])]]

    def answer(ask):
        out = client.completions.create(model="tiny", **ask)
        return [(c.text, c.finish_reason, c.logprobs and c.logprobs.token_logprobs) for c in out.choices]

    alone = [answer(ask) for ask in asks]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(answer, asks))
    # The same texts; log-probs within float32 rounding, as rows computed in one batch round otherwise than alone.
    assert [[(text, finish) for text, finish, _ in a] for a in together] == [[(t, f) for t, f, _ in a] for a in alone]
    for a, b in zip(together, alone):
        for (*_, got), (*_, want) in zip(a, b):
            assert (got is None) == (want is None) and (got is None or np.allclose(got, want, rtol=1e-4, atol=1e-4))
    assert [len(a) for a in alone] == [1, 2, 1, 1, 3, 2, 1, 1]


def test_a_full_queue_answers_503_with_retry_after(tiny):
    with serving(*tiny, max_queue=2) as served:
        gate = Gate(served.engine, at_step=1)
        url = served.url + "/v1/completions"
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            held = pool.submit(requests.post, url, json={"prompt": "hi", "max_tokens": 4}, timeout=WAIT)
            assert gate.reached.wait(WAIT)
            waiting = [pool.submit(requests.post, url, json={"prompt": p, "max_tokens": 4}, timeout=WAIT) for p in ("a", "b")]
            until(lambda: served.engine.jobs.qsize() == 2)  # both wait in the queue
            refused = requests.post(url, json={"prompt": "c", "max_tokens": 4}, timeout=WAIT)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "server_busy"
            gate.close()
            assert all(f.result().status_code == 200 for f in [held, *waiting])


def test_an_api_key_guards_everything_but_health_and_the_page(tiny):
    with serving(*tiny, api_key="s3cret") as served:
        keyless = openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0, timeout=WAIT)
        with pytest.raises(openai.AuthenticationError):
            keyless.models.list()
        keyed = openai.OpenAI(base_url=served.url + "/v1", api_key="s3cret", max_retries=0, timeout=WAIT)
        assert keyed.completions.create(model="tiny", prompt="hi", max_tokens=2).choices
        assert requests.get(served.url + "/health", timeout=WAIT).status_code == 200
        assert requests.get(served.url + "/", timeout=WAIT).status_code == 200
        for path in ("/tokenizer_info", "/metrics"):
            assert requests.get(served.url + path, timeout=WAIT).status_code == 401
        assert requests.post(served.url + "/tokenize", json={"prompt": "x"}, timeout=WAIT).status_code == 401


def test_cors_is_off_unless_asked_for(served, tiny):
    preflight = {"Origin": "http://page.test", "Access-Control-Request-Method": "POST"}
    answer = requests.options(served.url + "/v1/completions", headers=preflight, timeout=WAIT)
    assert "access-control-allow-origin" not in answer.headers
    with serving(*tiny, cors_origins=["http://page.test"]) as open_to_one:
        answer = requests.options(open_to_one.url + "/v1/completions", headers=preflight, timeout=WAIT)
        assert answer.headers["access-control-allow-origin"] == "http://page.test"


def test_a_warning_when_listening_beyond_loopback_without_a_key():
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("localhost", None) is None
    assert exposure_warning("::1", None) is None and exposure_warning("0.0.0.0", "key") is None
    assert "--api_key" in exposure_warning("0.0.0.0", None) and "--api_key" in exposure_warning("192.168.1.5", None)


def start(*args):
    return subprocess.Popen([sys.executable, str(ROOT / "gpt2.py"), "--serve", "--port", "0", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_gpt2_serve_prints_its_url_and_stops_cleanly(checkpoints, sig):
    models_dir = checkpoints["tiny"][0]
    process = start("--models_dir", models_dir)
    line = process.stdout.readline()  # printed once it listens
    assert line.startswith("gpt2.py: serving 124M at http://127.0.0.1:"), process.stderr.read()
    url = line.split(" at ")[1].split()[0]
    assert requests.get(url + "/health", timeout=WAIT).status_code == 200
    out = requests.post(url + "/v1/completions", json={"prompt": "The dog", "max_tokens": 5, "temperature": 0}, timeout=WAIT)
    assert out.json()["model"] == "124M"
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=WAIT)
    assert process.returncode == 0 and stdout == "" and "Traceback" not in stderr and stderr.endswith("gpt2.py: stopped\n")


@pytest.mark.parametrize("args, says", [(("hello",), "drop the prompt"), (("--temperature", "1"), "--temperature does nothing with --serve"),
                                        (("--port", "70000"), "--port must be")])
def test_serve_option_errors(args, says):
    result = subprocess.run([sys.executable, str(ROOT / "gpt2.py"), "--serve", *args], capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2 and says in result.stderr
    alone = subprocess.run([sys.executable, str(ROOT / "gpt2.py"), "hi", "--port", "1"], capture_output=True, text=True, timeout=WAIT)
    assert alone.returncode == 2 and "--port only applies with --serve" in alone.stderr
