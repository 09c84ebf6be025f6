"""HuggingFace's generation controls (repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_new_tokens), the
log-probs of what was generated, and several samples of one prompt from one prefill."""
import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf_process

import decoding
import gpt2
from conftest import SHAPES, random_params
from test_generate import MIXES, eot_model, hf_generate  # noqa: F401 (eot_model is a fixture)

EOT = gpt2.EOT
V = SHAPES["tiny"]["n_vocab"]


def fixed_logits(rows, seed=0):  # -> [rows, V] float32, of both signs
    return (np.random.default_rng(seed).standard_normal((rows, V)) * 4).astype(np.float32)


def hf_apply(processor, ids, logits):  # one row: [n], [V] -> [V]
    return processor(torch.tensor([list(ids)]), torch.from_numpy(logits[None].copy()))[0].numpy()


# Each control on fixed ids and logits equals HF's processor, value for value

@pytest.mark.parametrize("penalty", [1.2, 0.7, 3.0])
def test_repetition_penalty_equals_hf(penalty):
    rng = np.random.default_rng(1)
    logits = fixed_logits(5)
    for row in logits:
        ids = rng.integers(0, 40, size=int(rng.integers(1, 60))).tolist()  # small ids: many repeats
        ours = decoding.penalize_repetition(ids, row, penalty)
        np.testing.assert_array_equal(ours, hf_apply(hf_process.RepetitionPenaltyLogitsProcessor(penalty), ids, row))
        changed = np.flatnonzero(ours != row)
        assert set(changed) == set(ids) - {i for i in ids if row[i] == 0}  # every token seen, once, and no other
        assert ours.dtype == np.float32


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_equals_hf(n):
    rng = np.random.default_rng(n)
    logits = fixed_logits(8, seed=n)
    banned = 0
    for length, row in zip([1, 2, 3, 5, 20, 40, 60, 80], logits):
        ids = rng.integers(0, 4, size=length).tolist()  # four ids: n-grams repeat
        ours = decoding.ban_repeated_ngrams(ids, row, n)
        np.testing.assert_array_equal(ours, hf_apply(hf_process.NoRepeatNGramLogitsProcessor(n), ids, row))
        banned += np.isinf(ours).sum()
    assert banned > 0
    ids = [1, 2, 3, 1, 2]  # the docstring's example
    assert np.flatnonzero(np.isinf(decoding.ban_repeated_ngrams(ids, fixed_logits(1)[0], 3))).tolist() == [3]


def test_bad_words_equal_hf():
    words = [[7], [3, 4], [1, 2, 3], [9, 9], [20, 21, 22, 23]]
    processor = hf_process.NoBadWordsLogitsProcessor(words, eos_token_id=EOT)
    logits = fixed_logits(6)
    cases = [[5], [1, 2], [0, 1, 2], [3], [9], [20, 21, 22]]  # each ends with some bad word's beginning
    for ids, row in zip(cases, logits):
        ours = decoding.ban_bad_words(ids, row, words)
        np.testing.assert_array_equal(ours, hf_apply(processor, ids, row))
    assert np.isinf(decoding.ban_bad_words([1, 2], logits[0], words)[[7, 3]]).tolist() == [True, True]
    assert not np.isinf(decoding.ban_bad_words([5], logits[0], words)[[3, 4, 9, 23]]).any()


def test_min_new_tokens_equals_hf():
    prompt = [464, 3290, 318]
    row = fixed_logits(1)[0]
    processor = hf_process.MinNewTokensLengthLogitsProcessor(len(prompt), 4, EOT)
    for n_new in range(7):
        ids = prompt + [11] * n_new
        ours = decoding.Controls(min_new_tokens=4)(ids, n_new, row)
        np.testing.assert_array_equal(ours, hf_apply(processor, ids, row))
        assert np.isinf(ours[EOT]) == (n_new < 4)


def test_all_controls_then_sampling_in_hfs_order():
    """The controls together, then temperature, top-k and top-p: HF's LogitsProcessorList in its documented order."""
    controls = decoding.Controls(1.3, 2, ((7,), (3, 4)), 5)
    hf_controls = [hf_process.RepetitionPenaltyLogitsProcessor(1.3), hf_process.NoRepeatNGramLogitsProcessor(2),
                   hf_process.NoBadWordsLogitsProcessor([[7], [3, 4]], EOT), hf_process.MinNewTokensLengthLogitsProcessor(10, 5, EOT)]
    warpers = [hf_process.TemperatureLogitsWarper(0.7), hf_process.TopKLogitsWarper(40), hf_process.TopPLogitsWarper(0.9)]
    rng = np.random.default_rng(0)
    for row in fixed_logits(4) / 4:  # flatter, so that top-k and top-p keep several
        row[[4, 7, EOT]] = row.max() + 1  # make the banned tokens the likeliest, so that banning them changes top-k
        ids = rng.integers(0, 10, size=12).tolist() + [3]
        processed = controls(ids, len(ids) - 10, row)  # 3 new tokens, below min_new_tokens
        np.testing.assert_array_equal(processed, hf_apply(hf_process.LogitsProcessorList(hf_controls), ids, row))
        ours = decoding.sampling_logits(processed, 0.7, 40, 0.9)
        theirs = hf_apply(hf_process.LogitsProcessorList([*hf_controls, *warpers]), ids, row)
        np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
        np.testing.assert_array_equal(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)])
        assert np.isfinite(ours).sum() > 1 and np.isinf(ours[[4, 7, EOT]]).all()


# Generation with the controls equals HF's generate

CONTROLS = [dict(repetition_penalty=1.3), dict(repetition_penalty=0.8, no_repeat_ngram_size=3), dict(no_repeat_ngram_size=1),
            dict(min_new_tokens=10), dict(bad_words_ids="picks"),
            dict(repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=3, bad_words_ids="picks")]


def with_bad_words(options, params, hparams, prompts):
    """bad_words_ids="picks": words the unrestricted greedy text uses, one of one token and one of two."""
    if options.get("bad_words_ids") != "picks":
        return options
    first = gpt2.generate(prompts[0], params, hparams["n_head"], n_tokens=6, stop_at_eot=False)
    return dict(options, bad_words_ids=[[first[1]], first[3:5]])


@pytest.mark.parametrize("options", CONTROLS, ids=str)
def test_greedy_with_controls_equals_hf(eot_model, options):
    hparams, params, hf, prompts = eot_model
    options = with_bad_words(options, params, hparams, prompts)
    rows = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=15, **options)
    assert rows != gpt2.generate(prompts, params, hparams["n_head"], n_tokens=15)  # the controls changed something
    for prompt, row in list(zip(prompts, rows))[:2]:
        assert gpt2.generate(prompt, params, hparams["n_head"], n_tokens=15, **options) == row  # alone, the same
        assert hf_generate(hf, [prompt], 15, do_sample=False, **options) == [row]
    if options.get("no_repeat_ngram_size") != 1:
        assert rows == hf_generate(hf, prompts, 15, do_sample=False, **options)
    else:  # HF counts a row's left padding (<|endoftext|>) as text: with n-grams of 1 it bans <|endoftext|> there
        assert rows == [hf_generate(hf, [prompt], 15, do_sample=False, **options)[0] for prompt in prompts]


def test_batches_of_different_lengths_with_controls_equal_hf(eot_model):
    hparams, params, hf, _ = eot_model
    options = dict(repetition_penalty=1.2, no_repeat_ngram_size=2, min_new_tokens=2)
    for lengths in MIXES:
        prompts = [np.random.default_rng(sum(lengths)).integers(0, 50000, size=n).tolist() for n in lengths]
        assert gpt2.generate(prompts, params, hparams["n_head"], n_tokens=12, **options) == \
            hf_generate(hf, prompts, 12, do_sample=False, **options)


def test_sampling_respects_the_controls(eot_model):
    hparams, params, _, prompts = eot_model
    options = dict(temperature=1.5, rng=0, no_repeat_ngram_size=2, min_new_tokens=8, bad_words_ids=[[1000], [42, 43]])
    rows = gpt2.generate(prompts * 3, params, hparams["n_head"], n_tokens=20, **options)
    for prompt, row in zip(prompts * 3, rows):
        text = prompt + row
        bigrams = list(zip(text, text[1:]))
        assert len(bigrams) == len(set(bigrams)), "an n-gram repeated"
        assert EOT not in row[:8] and 1000 not in row and (42, 43) not in set(zip(row, row[1:]))


def naive_sliding(prompt, params, n_head, n_tokens, controls):
    """The documented rule with no cache: the controls see everything, the model the last n_ctx // 2 tokens when full."""
    n_ctx = len(params["wpe"])
    window, out = list(prompt[-n_ctx:]), []
    for step in range(n_tokens):
        logits = controls(prompt + out, step, gpt2.gpt2(window, **params, n_head=n_head)[-1])
        out.append(int(np.argmax(logits)))
        window.append(out[-1])
        if len(window) > n_ctx:
            window = window[-(n_ctx // 2):]
    return out


def test_controls_see_the_whole_text_when_the_window_slides():
    hparams = dict(SHAPES["tiny"], n_ctx=32)
    params = random_params(hparams, seed=5)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 50000, size=n).tolist() for n in (40, 7)]
    options = dict(repetition_penalty=1.4, no_repeat_ngram_size=2)
    rows = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=50, slide=True, stop_at_eot=False, **options)
    controls = decoding.Controls(1.4, 2)
    assert rows == [naive_sliding(p, params, hparams["n_head"], 50, controls) for p in prompts]


# Log-probs

def hf_scores(hf, prompts, n_tokens, **options):
    """HF's generate with its raw logits and processed scores -> (new ids per row, logits steps, scores steps)."""
    width = max(map(len, prompts))
    ids = torch.tensor([[EOT] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=n_tokens, return_dict_in_generate=True,
                          output_scores=True, output_logits=True, **options)
    return out


def assert_logprobs_match(rows, logprobs, raw, processed, top, n_top):
    """Ours against HF's transition scores ([rows, steps] raw and processed) and topk ([steps][rows] (values, ids))."""
    for r, (row, records) in enumerate(zip(rows, logprobs)):
        assert len(records) == len(row) > 0
        np.testing.assert_allclose([x.logprob for x in records], raw[r, : len(row)], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose([x.processed for x in records], processed[r, : len(row)], rtol=1e-4, atol=1e-4)
        for step, record in enumerate(records):
            values, ids = top[step]
            assert [i for i, _ in record.top] == ids[r].tolist() and len(record.top) == n_top
            np.testing.assert_allclose([v for _, v in record.top], values[r], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("options", [{}, dict(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=4)], ids=str)
def test_greedy_logprobs_equal_hf_transition_scores(eot_model, options):
    hparams, params, hf, prompts = eot_model
    rows, logprobs = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=10, logprobs=5, **options)
    out = hf_scores(hf, prompts, 10, do_sample=False, **options)
    raw = hf.compute_transition_scores(out.sequences, out.logits, normalize_logits=True).numpy()
    processed = hf.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).numpy()
    top = [torch.topk(torch.log_softmax(step, dim=-1), 5) for step in out.logits]
    assert rows == gpt2.generate(prompts, params, hparams["n_head"], n_tokens=10, **options)
    assert_logprobs_match(rows, logprobs, raw, processed, [(v.numpy(), i.numpy()) for v, i in top], 5)
    assert all(x.logprob <= 0 and x.processed <= 0 for records in logprobs for x in records)
    if options:
        assert any(x.logprob != pytest.approx(x.processed, abs=1e-3) for records in logprobs for x in records)


def test_sampled_logprobs_are_the_models_and_the_drawn_distributions(eot_model):
    """A sample's log-probs: the model's raw distribution, read off HF's forward pass over the sampled text, and
    the distribution it was drawn from, HF's processors and warpers applied to those logits."""
    hparams, params, hf, prompts = eot_model
    options = dict(temperature=0.7, top_k=50, top_p=0.95, repetition_penalty=1.2)
    row, records = gpt2.generate(prompts[1], params, hparams["n_head"], n_tokens=12, rng=3, logprobs=3, **options)
    text = prompts[1] + row
    with torch.no_grad():
        logits = hf(torch.tensor([text])).logits[0, len(prompts[1]) - 1 : -1]  # the logits that chose each of row
    processors = hf_process.LogitsProcessorList([
        hf_process.RepetitionPenaltyLogitsProcessor(1.2), hf_process.TemperatureLogitsWarper(0.7),
        hf_process.TopKLogitsWarper(50), hf_process.TopPLogitsWarper(0.95)])
    for step, (token_id, record) in enumerate(zip(row, records)):
        model = torch.log_softmax(logits[step], dim=-1)
        drawn = torch.log_softmax(processors(torch.tensor([text[: len(prompts[1]) + step]]), logits[step][None]), -1)[0]
        assert record.logprob == pytest.approx(float(model[token_id]), abs=1e-4)
        assert record.processed == pytest.approx(float(drawn[token_id]), abs=1e-4)
        assert [i for i, _ in record.top] == torch.topk(model, 3).indices.tolist()


def test_streamed_logprobs_are_those_generate_returns(eot_model):
    hparams, params, _, prompts = eot_model
    streamed = list(gpt2.generate_stream(prompts[0], params, hparams["n_head"], n_tokens=6, logprobs=2))
    ids, logprobs = gpt2.generate(prompts[0], params, hparams["n_head"], n_tokens=6, logprobs=2)
    assert [i for i, _ in streamed] == ids and [x for _, x in streamed] == logprobs
    assert isinstance(logprobs[0], decoding.Logprob) and logprobs[0].top[0][1] >= logprobs[0].top[1][1]
    assert gpt2.generate(prompts[0], params, hparams["n_head"], n_tokens=6, logprobs=0)[1][0].top == []


# Several samples of one prompt: one prefill

@pytest.fixture(scope="module")
def long_context():
    hparams = dict(SHAPES["tiny"], n_ctx=1024)
    return hparams, random_params(hparams, seed=2)


def count_positions(monkeypatch):
    """A list that gets, for each call of the forward pass, how many positions it reads (rows x tokens)."""
    positions, forward = [], gpt2.gpt2

    def counting(inputs, *args, **kwargs):
        positions.append(np.size(inputs))
        return forward(inputs, *args, **kwargs)

    monkeypatch.setattr(gpt2, "gpt2", counting)
    return positions


def assert_as_if_alone(prompt, row, records, params, n_head):
    """Each log-prob of a generated row is the model's for that token with its own prompt read afresh, no cache."""
    alone = gpt2.gpt2(prompt + row[:-1], **params, n_head=n_head)[len(prompt) - 1 :]
    np.testing.assert_allclose([x.logprob for x in records], decoding.log_softmax(alone)[np.arange(len(row)), row],
                               rtol=1e-4, atol=1e-4)


def test_samples_of_one_prompt_read_it_once(long_context, monkeypatch):
    hparams, params = long_context
    prompt = np.random.default_rng(0).integers(0, 50000, size=500).tolist()
    positions = count_positions(monkeypatch)
    rows, logprobs = gpt2.generate(prompt, params, hparams["n_head"], n_tokens=10, temperature=1.0, rng=0,
                                   num_return_sequences=8, stop_at_eot=False, logprobs=0)
    assert positions == [500] + [8] * 9  # the prompt once, then one position per sample per step
    assert len(rows) == 8 and len({tuple(row) for row in rows}) > 1
    monkeypatch.undo()
    for row, records in zip(rows[:2], logprobs):
        assert_as_if_alone(prompt, row, records, params, hparams["n_head"])


def test_samples_of_a_batch_come_prompt_by_prompt(long_context, monkeypatch):
    hparams, params = long_context
    prompts = [[464, 3290, 318], [31373, 995]]
    positions = count_positions(monkeypatch)
    rows, logprobs = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=5, temperature=1.0, rng=1,
                                   num_return_sequences=3, stop_at_eot=False, logprobs=0)
    assert positions == [6] + [6] * 4 and len(rows) == 6  # two prompts padded to 3, once; then 6 rows a step
    monkeypatch.undo()
    for i, (row, records) in enumerate(zip(rows, logprobs)):  # rows 0-2 continue the first prompt, 3-5 the second
        assert_as_if_alone(prompts[i // 3], row, records, params, hparams["n_head"])


# Bad input

@pytest.mark.parametrize(
    "options, message",
    [
        (dict(repetition_penalty=0), "repetition_penalty must be a number above 0"),
        (dict(repetition_penalty=float("inf")), "repetition_penalty must be a number above 0"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be a whole number"),
        (dict(no_repeat_ngram_size=2.5), "no_repeat_ngram_size must be a whole number"),
        (dict(min_new_tokens=-2), "min_new_tokens must be a whole number"),
        (dict(bad_words_ids=[464]), "bad_words_ids must be a list of non-empty lists"),
        (dict(bad_words_ids=[[]]), "bad_words_ids must be a list of non-empty lists"),
        (dict(bad_words_ids=[[60000]]), "token ids in [0, 50257)"),
        (dict(bad_words_ids="cat"), "bad_words_ids must be a list"),
        (dict(bad_words_ids=[[EOT]]), "give min_new_tokens"),
        (dict(logprobs=-1), "logprobs must be None, or how many"),
        (dict(logprobs=True), "logprobs must be None, or how many"),
        (dict(num_return_sequences=2), "would give 2 copies of one text: sample (temperature above 0) or search"),
        (dict(num_return_sequences=0, temperature=1), "num_return_sequences must be a whole number of at least 1"),
        (dict(presence_penalty=2.5), "presence_penalty must be a number from -2 to 2"),
        (dict(frequency_penalty="1"), "frequency_penalty must be a number from -2 to 2"),
        (dict(logit_bias={464: 101}), "logit_bias must map token ids"),
        (dict(logit_bias={50257: 1}), "logit_bias must map token ids in [0, 50257)"),
        (dict(logit_bias=[464]), "logit_bias must map token ids"),
    ],
)
def test_bad_controls(eot_model, options, message):
    hparams, params, _, _ = eot_model
    with pytest.raises(ValueError) as e:
        gpt2.generate_stream([464], params, hparams["n_head"], n_tokens=2, **options)  # checked before any step
    assert message in str(e.value)


def test_openai_penalties_and_logit_bias():
    logits = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    controls = decoding.Controls.checked(n_vocab=4, eos_token_id=None, logit_bias={0: 5, 3: -1.5}, presence_penalty=0.5,
                                         frequency_penalty=1.0)
    # ids: a prompt [2, 2] (not counted: only generated tokens are), then generated [1, 3, 1]
    out = controls([2, 2, 1, 3, 1], 3, logits)
    np.testing.assert_array_equal(out, [1 + 5, 2 - 0.5 - 2 * 1.0, 3, 4 - 1.5 - 0.5 - 1.0])
    assert out.dtype == np.float32 and logits.tolist() == [1, 2, 3, 4]  # the logits passed in are left alone
    np.testing.assert_array_equal(controls([2, 2], 0, logits), [6, 2, 3, 2.5])  # nothing generated yet: the bias alone
    assert decoding.Controls.checked(n_vocab=4, eos_token_id=None, logit_bias={}) == decoding.Controls(eos_token_id=EOT)


def test_logit_bias_steers_generation(eot_model):
    hparams, params, _, _ = eot_model
    free = gpt2.generate([464, 3290], params, hparams["n_head"], 6)
    banned = gpt2.generate([464, 3290], params, hparams["n_head"], 6, logit_bias={free[0]: -100})
    forced = gpt2.generate([464, 3290], params, hparams["n_head"], 6, logit_bias={464: 100})
    assert banned[0] != free[0] and forced == [464] * 6
