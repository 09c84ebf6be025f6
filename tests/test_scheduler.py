"""The engine's continuous batching and prefix cache, through the real server: requests that run together in one
batch get what they get alone, prompts read in chunks and from a cached prefix give score()'s log-probs (within
LOGPROB_TOL: a batch or a cache rounds otherwise than one pass), and the cache keeps to its budget.
"""
import concurrent.futures

import numpy as np
import pytest
import requests

import gpt2
import server.engine
import utils
from serving import WAIT, Gate, serving, until

LOGPROB_TOL = 1e-5  # relative and absolute: float32 rounding of a sum over n_embd


@pytest.fixture(scope="module")
def tiny(checkpoints):
    models_dir, model_size, _, _ = checkpoints["tiny"]
    return utils.load_encoder_hparams_and_params(model_size, models_dir)


def complete(url, **body):
    answer = requests.post(url + "/v1/completions", json=body, timeout=WAIT)
    assert answer.status_code == 200, answer.text
    return answer.json()


def metric(url, name):
    line, = [l for l in requests.get(url + "/metrics", timeout=WAIT).text.splitlines() if l.startswith(name + " ")]
    return float(line.split()[1])


def test_requests_that_arrive_together_run_in_one_batch(tiny):
    prompts = ["The dog", "Alan Turing", "Once upon a time", "Hello world", "A B C", "The cat", "Zebra", "Why"]
    with serving(*tiny, prefix_cache_mb=0) as alone:
        want = [complete(alone.url, prompt=p, max_tokens=12, temperature=0.7, seed=i, n=2) for i, p in enumerate(prompts)]
    with serving(*tiny, prefix_cache_mb=0) as served:
        gate = Gate(served.engine, at_step=1)  # the first request waits until the other seven are queued
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            first = pool.submit(complete, served.url, prompt=prompts[0], max_tokens=12, temperature=0.7, seed=0, n=2)
            assert gate.reached.wait(WAIT)
            rest = [pool.submit(complete, served.url, prompt=p, max_tokens=12, temperature=0.7, seed=i, n=2)
                    for i, p in enumerate(prompts[1:], 1)]
            until(lambda: served.engine.jobs.qsize() == 7)
            gate.close()
            got = [f.result() for f in [first, *rest]]
        assert [[c["text"] for c in g["choices"]] for g in got] == [[c["text"] for c in w["choices"]] for w in want]
        generated = sum(g["usage"]["completion_tokens"] for g in got)
        assert generated == 8 * 2 * 12 and served.engine.stats["steps"] < generated / 8  # 16 rows a step


def test_a_long_prompt_is_read_in_chunks(tiny, monkeypatch):
    encoder, hparams, params = tiny
    monkeypatch.setattr(server.engine, "CHUNK", 16)
    ids = encoder.encode("The quick brown fox jumps over the lazy dog. " * 12)[:100]
    assert len(ids) == 100
    with serving(*tiny, prefix_cache_mb=0) as served:
        out = complete(served.url, prompt=ids, max_tokens=10, temperature=0, echo=True, logprobs=2)
    lp = out["choices"][0]["logprobs"]
    np.testing.assert_allclose(lp["token_logprobs"][1:100], gpt2.score(ids, params, hparams["n_head"]), rtol=LOGPROB_TOL, atol=LOGPROB_TOL)
    want = gpt2.generate(ids, params, hparams["n_head"], 10)
    assert out["choices"][0]["text"] == encoder.decode(ids + want)


def test_contexts_are_read_once_and_give_the_same_log_probs(tiny):
    encoder, hparams, params = tiny
    context = encoder.encode("Q: What is the capital of France? Answer in one word, please.\nA:")
    answers = [encoder.encode(a) for a in (" Paris", " Lyon", " Marseille is the answer", " I do not know")]
    with serving(*tiny) as served:
        for i, answer in enumerate(answers):
            ids = context + answer
            out = complete(served.url, prompt=ids, max_tokens=0, echo=True, logprobs=1)
            lp = out["choices"][0]["logprobs"]
            np.testing.assert_allclose(lp["token_logprobs"][1:], gpt2.score(ids, params, hparams["n_head"]),
                                       rtol=LOGPROB_TOL, atol=LOGPROB_TOL)
            for token, chosen, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
                if token in top:
                    assert top[token] == chosen  # lm-eval's is_greedy, through the cache too
            # the second and later share the context: all of it but its last token is reused
            assert metric(served.url, "gpt2_prefix_cache_reused_tokens") == i * (len(context) - 1)
        again = complete(served.url, prompt=context + answers[0], max_tokens=3, temperature=0)
        assert metric(served.url, "gpt2_prefix_cache_hits") == len(answers)  # the whole prompt, cached
        assert again["choices"][0]["text"] == encoder.decode(gpt2.generate(context + answers[0], params, hparams["n_head"], 3))


def test_the_prefix_cache_keeps_to_its_budget(tiny):
    encoder, hparams, params = tiny
    with serving(*tiny, prefix_cache_mb=1) as served:
        cache = served.engine.prefix
        for i in range(12):  # each a different 100-token prompt: about 100 kB of keys and values, and 200 kB of logits
            complete(served.url, prompt=[i + 1] * 100, max_tokens=1, temperature=0)
            assert cache.nbytes <= 1 << 20 and cache.nbytes == sum(e.nbytes for e in cache.entries.values())
        assert 0 < len(cache.entries) < 12 and metric(served.url, "gpt2_prefix_cache_bytes") == cache.nbytes
        assert tuple([12] * 100) in cache.entries and tuple([1] * 100) not in cache.entries  # the oldest went first
