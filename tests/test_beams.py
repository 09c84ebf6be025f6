"""Beam search: its bookkeeping on fixed log-probs, and whole searches against HuggingFace's generate(num_beams=...)
on the same weights, with the controls, log-probs, batches of different lengths and <|endoftext|> reachable."""
import numpy as np
import pytest
import torch

import beam
import gpt2
from conftest import SHAPES, random_params
from test_controls import assert_logprobs_match, count_positions, hf_scores
from test_generate import eot_model, hf_generate  # noqa: F401 (eot_model is a fixture)

EOT = gpt2.EOT

SETTINGS = [
    dict(num_beams=2),
    dict(num_beams=4, length_penalty=0.5, num_return_sequences=2),
    dict(num_beams=3, early_stopping=True, num_return_sequences=3),
    dict(num_beams=4, early_stopping="never", length_penalty=2.0),
    dict(num_beams=3, length_penalty=-1.0, num_return_sequences=2),
    dict(num_beams=3, early_stopping=True, repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=3),
]


def logprobs_with(values, fill=-20.0):  # {token: log-prob} -> [n_vocab]
    out = np.full(EOT + 1, fill, dtype=np.float32)
    out[list(values)] = list(values.values())
    return out


def test_bookkeeping_on_fixed_logprobs():
    """Two beams, three tokens: A=1 B=2 C=3 D=4 E=5 F=6. A then <|endoftext|> ends first; at the end B D E
    (-0.9 / 3 = -0.3) beats A C F (-1.2 / 3 = -0.4) for the second place, after A EOT (-0.3 / 2 = -0.15)."""
    search = beam.BeamSearch(num_beams=2, n_tokens=3)
    assert search.step(logprobs_with({1: -0.1, 2: -0.5, EOT: -0.7})[None]).tolist() == [0, 0]
    assert search.tokens == [[1], [2]] and search.scores.tolist() == pytest.approx([-0.1, -0.5])
    # beam 0 (A) ends with EOT, the best candidate; B D and A C run on, in that order
    origins = search.step(np.stack([logprobs_with({EOT: -0.2, 3: -1.0}), logprobs_with({4: -0.1})]))
    assert origins.tolist() == [1, 0] and search.tokens == [[2, 4], [1, 3]] and not search.done
    assert [(round(float(s), 4), t) for s, t, _ in search.hypotheses] == [(-0.15, [1, EOT])]
    search.step(np.stack([logprobs_with({5: -0.3}), logprobs_with({6: -0.1})]))
    assert search.done
    assert [(round(float(s), 4), t) for s, t, _ in search.best(2)] == [(-0.15, [1, EOT]), (-0.3, [2, 4, 5])]


def test_early_stopping_ends_with_num_beams_hypotheses():
    search = beam.BeamSearch(num_beams=2, n_tokens=10, early_stopping=True)
    search.step(logprobs_with({1: -0.1, 2: -0.2})[None])
    search.step(np.stack([logprobs_with({EOT: -0.1, 3: -2.0}), logprobs_with({EOT: -0.1, 4: -3.0})]))
    assert search.done and [t for _, t, _ in search.best(2)] == [[1, EOT], [2, EOT]]


@pytest.mark.parametrize("options", SETTINGS, ids=str)
def test_beam_search_equals_hf(eot_model, options):
    hparams, params, hf, prompts = eot_model
    rows = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=12, **options)
    assert rows == hf_generate(hf, prompts, 12, do_sample=False, **options)
    n = options.get("num_return_sequences", 1)
    assert len(rows) == len(prompts) * n
    alone = gpt2.generate(prompts[2], params, hparams["n_head"], n_tokens=12, **options)
    assert alone == (rows[2 * n : 3 * n] if n > 1 else rows[2])  # a prompt alone: the rows it has in the batch
    assert (alone if n > 1 else [alone]) == hf_generate(hf, [prompts[2]], 12, do_sample=False, **options)


def test_beam_search_reaches_endoftext_and_other_texts_than_greedy(eot_model):
    hparams, params, _, prompts = eot_model
    rows = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=12, num_beams=3, num_return_sequences=3)
    assert any(row[-1] == EOT and len(row) < 12 for row in rows) and all(EOT not in row[:-1] for row in rows)
    assert rows[::3] != gpt2.generate(prompts, params, hparams["n_head"], n_tokens=12)
    ignoring = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=12, num_beams=3, stop_at_eot=False)
    assert all(len(row) == 12 for row in ignoring)


@pytest.mark.parametrize("options", [SETTINGS[1], SETTINGS[5]], ids=str)
def test_beam_logprobs_equal_hf_transition_scores(eot_model, options):
    hparams, params, hf, prompts = eot_model
    rows, logprobs = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=10, logprobs=3, **options)
    out = hf_scores(hf, prompts, 10, do_sample=False, **options)
    raw = hf.compute_transition_scores(out.sequences, out.logits, out.beam_indices, normalize_logits=True).numpy()
    processed = hf.compute_transition_scores(out.sequences, out.scores, out.beam_indices).numpy()
    # the top tokens of the beam each token was chosen from, at its step
    beams = out.beam_indices.numpy()
    top = [[torch.topk(torch.log_softmax(out.logits[step][max(b, 0)], -1), 3) for b in beams[:, step]]
           for step in range(beams.shape[1])]
    top = [(np.stack([v.numpy() for v, _ in step]), np.stack([i.numpy() for _, i in step])) for step in top]
    assert rows == hf_generate(hf, prompts, 10, do_sample=False, **options)
    assert_logprobs_match(rows, logprobs, raw, processed, top, 3)
    length_penalty = options.get("length_penalty", 1.0)
    for row, records, score in zip(rows, logprobs, out.sequences_scores.numpy()):  # HF's beam scores, added up
        assert sum(x.processed for x in records) / len(row) ** length_penalty == pytest.approx(score, abs=1e-4)


def test_beams_read_the_prompt_once_and_come_once_the_search_is_done(monkeypatch):
    hparams = dict(SHAPES["tiny"], n_ctx=1024)
    params = random_params(hparams, seed=2)
    prompt = np.random.default_rng(0).integers(0, 50000, size=500).tolist()
    positions = count_positions(monkeypatch)
    stream = gpt2.generate_stream(prompt, params, hparams["n_head"], n_tokens=6, num_beams=4, stop_at_eot=False)
    first = next(stream)
    assert positions == [500] + [4] * 5  # the whole search ran before the first id came
    assert [first, *stream] == gpt2.generate(prompt, params, hparams["n_head"], n_tokens=6, num_beams=4, stop_at_eot=False)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_beams=0), "num_beams must be a whole number of at least 1"),
        (dict(num_beams=2, temperature=0.7), "beam search (num_beams 2) is a search, not a draw"),
        (dict(num_beams=2, slide=True), "beam search cannot slide its window"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences (3) is more than num_beams (2)"),
        (dict(num_beams=2, early_stopping="sometimes"), 'early_stopping must be True, False or "never"'),
        (dict(num_beams=2, length_penalty=float("nan")), "length_penalty must be a number"),
    ],
)
def test_bad_beam_options(eot_model, options, message):
    hparams, params, _, _ = eot_model
    with pytest.raises(ValueError) as e:
        gpt2.generate_stream([464], params, hparams["n_head"], n_tokens=2, **options)
    assert message in str(e.value)
