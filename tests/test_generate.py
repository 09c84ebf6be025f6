"""Decoding as users ask for it: batches, sampling, stopping, streaming, scoring, sliding windows."""
import numpy as np
import pytest
import torch

import decoding
import gpt2
import textstream
from conftest import SHAPES, hf_model, random_params
from encoder import get_encoder

EOT = gpt2.EOT
MIXES = [(1, 5, 12), (7, 7), (3, 30, 1, 9), (20, 2)]


@pytest.fixture(scope="module")
def encoder():
    return get_encoder("124M", "models")


@pytest.fixture(scope="module", params=list(SHAPES))
def eot_model(request):
    """Random weights where <|endoftext|> takes the place of one common greedy pick, so rows end early.

    With the unembedding tied to wte, setting wte[EOT] to 1.01 x wte[X] makes EOT win wherever X would
    have won with a positive logit; nothing else changes until then.
    """
    hparams = SHAPES[request.param]
    params = random_params(hparams, seed=7)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 50000, size=n).tolist() for n in (4, 9, 2, 15)]
    picks = [gpt2.generate(p, params, hparams["n_head"], n_tokens=12, stop_at_eot=False) for p in prompts]
    x = picks[0][5]
    params["wte"] = params["wte"].copy()
    params["wte"][EOT] = 1.01 * params["wte"][x]
    return hparams, params, hf_model(hparams, params), prompts


def hf_generate(hf, prompts, n_tokens, **kwargs):
    """HF's generate on a left-padded batch: each row's new ids, up to and including <|endoftext|>."""
    width = max(map(len, prompts))
    ids = torch.tensor([[EOT] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=n_tokens, **kwargs)[:, width:].tolist()
    return [row[: row.index(EOT) + 1] if EOT in row else row for row in out]


@pytest.mark.parametrize("lengths", MIXES, ids=str)
def test_batch_rows_equal_each_prompt_alone_and_hf(eot_model, lengths):
    hparams, params, hf, _ = eot_model
    rng = np.random.default_rng(sum(lengths))
    prompts = [rng.integers(0, 50000, size=n).tolist() for n in lengths]
    rows = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=15)
    alone = [gpt2.generate(p, params, hparams["n_head"], n_tokens=15) for p in prompts]
    assert rows == alone
    assert rows == hf_generate(hf, prompts, 15, do_sample=False)


def test_rows_end_at_endoftext(eot_model):
    hparams, params, hf, prompts = eot_model
    rows = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=12)
    assert rows == hf_generate(hf, prompts, 12, do_sample=False)
    ended = [row for row in rows if row[-1] == EOT]
    assert ended and all(len(row) < 12 and EOT not in row[:-1] for row in ended)
    ignoring = gpt2.generate(prompts[0], params, hparams["n_head"], n_tokens=12, stop_at_eot=False)
    assert len(ignoring) == 12 and ignoring[: len(rows[0])] == rows[0]


def test_stream_yields_what_generate_returns(eot_model):
    hparams, params, _, prompts = eot_model
    steps = list(gpt2.generate_stream(prompts, params, hparams["n_head"], n_tokens=12))
    rows = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=12)
    assert [[s[i] for s in steps if s[i] is not None] for i in range(len(prompts))] == rows
    assert list(gpt2.generate_stream(prompts[1], params, hparams["n_head"], n_tokens=12)) == rows[1]


def test_stream_checks_arguments_before_the_first_step(eot_model):
    hparams, params, _, _ = eot_model
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        gpt2.generate_stream([464], params, hparams["n_head"], temperature=-1)  # not iterated


# Sampling

def test_top_k_filter_matches_hf():
    from transformers.generation.logits_process import TopKLogitsWarper

    logits = np.random.default_rng(0).standard_normal((5, 1000)).astype(np.float32)
    for k in (1, 2, 10, 999, 1000):
        ours = np.stack([decoding.top_k_filter(row, k) for row in logits])
        theirs = TopKLogitsWarper(k)(None, torch.from_numpy(logits)).numpy()
        np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
        assert (np.isfinite(ours).sum(axis=1) == k).all()


def test_top_p_filter_matches_hf():
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = (np.random.default_rng(1).standard_normal((5, 1000)) * 3).astype(np.float32)
    for p in (0.01, 0.3, 0.9, 0.999):
        ours = np.stack([decoding.top_p_filter(decoding.softmax(row), p) for row in logits])
        theirs = TopPLogitsWarper(p)(None, torch.from_numpy(logits)).numpy()
        np.testing.assert_array_equal(ours == 0, np.isinf(theirs))


def test_filters_on_known_logits():
    np.testing.assert_array_equal(decoding.top_k_filter(np.float32([1, 3, 2]), 2), [-np.inf, 3, 2])
    np.testing.assert_array_equal(decoding.top_k_filter(np.float32([1, 3, 3, 2]), 1), [-np.inf, 3, 3, -np.inf])  # ties stay
    np.testing.assert_allclose(decoding.top_p_filter(np.float32([0.5, 0.3, 0.2]), 0.6), [0.5, 0.3, 0])
    np.testing.assert_allclose(decoding.top_p_filter(np.float32([0.2, 0.5, 0.3]), 0.5), [0, 0.5, 0])
    np.testing.assert_allclose(decoding.top_p_filter(np.float32([0.2, 0.5, 0.3]), 1e-9), [0, 0.5, 0])  # one stays


def test_sample_draws_from_the_filtered_distribution():
    logits = np.float32([0.0, 1.0, 2.0, -1.0])
    rng = np.random.default_rng(0)

    def frequencies(**options):
        draws = [decoding.sample(logits, rng=rng, **options) for _ in range(20000)]
        return np.bincount(draws, minlength=4) / len(draws)

    np.testing.assert_allclose(frequencies(temperature=1.0), decoding.softmax(logits), atol=0.015)
    np.testing.assert_allclose(frequencies(temperature=0.5), decoding.softmax(logits / 0.5), atol=0.015)
    assert frequencies(temperature=1.0, top_k=2)[[0, 3]].sum() == 0
    p = decoding.softmax(logits)
    assert frequencies(temperature=1.0, top_p=0.6)[[0, 1, 3]].sum() == 0 and p[2] > 0.6
    assert decoding.sample(logits, temperature=0) == 2


def test_seeded_sampling_is_reproducible(eot_model):
    hparams, params, _, prompts = eot_model
    run = lambda rng: gpt2.generate(prompts, params, hparams["n_head"], n_tokens=10, temperature=2.0, top_k=50, rng=rng)
    assert run(123) == run(123) == run(np.random.default_rng(123))
    assert len({str(run(seed)) for seed in range(4)}) > 1
    greedy = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=10)
    assert gpt2.generate(prompts, params, hparams["n_head"], n_tokens=10, temperature=0, rng=5) == greedy


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(temperature=-0.5), "temperature must be a number >= 0"),
        (dict(temperature=float("nan")), "temperature must be a number >= 0"),
        (dict(temperature=1, top_k=0), "top_k must be a whole number of at least 1"),
        (dict(temperature=1, top_p=0), "top_p must be a number in (0, 1]"),
        (dict(temperature=1, top_p=1.5), "top_p must be a number in (0, 1]"),
    ],
)
def test_bad_sampling_options(eot_model, options, message):
    hparams, params, _, _ = eot_model
    with pytest.raises(ValueError) as e:
        gpt2.generate([464], params, hparams["n_head"], n_tokens=2, **options)
    assert message in str(e.value)


# Stop strings and streaming text

TEXTS = ["Hello, world! Goodbye, world.", "naïve café 日本語のテキスト 😀👍🏽👨‍👩‍👧 🇯🇵 done", "x = 1\n\n\tif x:\n  pass"]


@pytest.mark.parametrize("text", TEXTS)
def test_text_stream_emits_whole_characters_once(encoder, text):
    ids = encoder.encode(text)
    stream = textstream.TextStream(encoder)
    pieces = [stream.add(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text == textstream.decode_text(ids, encoder)
    assert not any("\ufffd" in piece for piece in pieces)
    assert len(ids) > len(text.split())  # several tokens per word: boundaries fall inside characters too


@pytest.mark.parametrize(
    "stop, expected",
    [
        (["o, wo"], "Hell"),  # "Hello" "," " world": the stop string spans three tokens
        (["world", "Good"], "Hello, "),  # the earliest match wins
        (["Goodbye", "!"], "Hello, world"),
        (["nowhere"], "Hello, world! Goodbye, world."),
        (["."], "Hello, world! Goodbye, world"),
        (["world.", ""], "Hello, world! Goodbye, "),
    ],
)
def test_stop_strings_across_token_boundaries(encoder, stop, expected):
    ids = encoder.encode("Hello, world! Goodbye, world.")
    stream = textstream.TextStream(encoder, stop)
    pieces = []
    for i in ids:
        pieces.append(stream.add(i))
        if stream.done:
            break
    pieces.append(stream.flush())
    assert "".join(pieces) == expected


def test_text_held_back_for_a_stop_string_comes_out_at_the_end(encoder):
    ids = encoder.encode("a cat sat on the m")
    stream = textstream.TextStream(encoder, ["the mat"])
    streamed = "".join(stream.add(i) for i in ids)
    assert streamed == "a cat sat on "  # "the m" could still become "the mat"
    assert streamed + stream.flush() == "a cat sat on the m"


def test_endoftext_ends_the_text_unless_ignored(encoder):
    ids = encoder.encode("Done.") + [EOT] + encoder.encode(" More")
    assert textstream.decode_text(ids, encoder) == "Done."
    assert textstream.decode_text(ids, encoder, stop_at_eot=False) == "Done.<|endoftext|> More"


def test_stream_text_stops_before_a_stop_string(eot_model, encoder):
    hparams, params, _, prompts = eot_model
    ids = gpt2.generate(prompts[2], params, hparams["n_head"], n_tokens=20, stop_at_eot=False)
    full = encoder.decode(ids)
    stop = full[len(full) // 2 : len(full) // 2 + 4]
    streamed = "".join(textstream.stream_text(prompts[2], params, hparams["n_head"], encoder, n_tokens=20,
                                        stop=[stop], stop_at_eot=False))
    assert streamed == full[: full.index(stop)]
    unstopped = textstream.stream_text(prompts[2], params, hparams["n_head"], encoder, n_tokens=20, stop_at_eot=False)
    assert "".join(unstopped) == full


# Scoring

def hf_window_logprobs(hf, ids, n_ctx, stride):
    """HuggingFace's sliding-window perplexity recipe, per token: (log-probs, perplexity)."""
    ids = torch.tensor([ids])
    scored, nll_sum, n_scored, prev_end = [], 0.0, 0, 0
    for begin in range(0, ids.size(1), stride):
        end = min(begin + n_ctx, ids.size(1))
        trg_len = end - prev_end
        window, labels = ids[:, begin:end], ids[:, begin:end].clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            out = hf(window, labels=labels)
        logprobs = torch.log_softmax(out.logits[0, :-1], dim=-1)
        targets = labels[0, 1:]
        kept = targets != -100
        scored.append(logprobs[kept].gather(1, targets[kept, None])[:, 0])
        nll_sum += out.loss.item() * int(kept.sum())
        n_scored += int(kept.sum())
        prev_end = end
        if end == ids.size(1):
            break
    return torch.cat(scored).numpy(), float(np.exp(nll_sum / n_scored))


@pytest.mark.parametrize("n, stride", [(40, None), (300, None), (300, 50), (257, "n_ctx - 1"), (129, 1)])
def test_score_matches_hf_perplexity_recipe(eot_model, n, stride):
    hparams, params, hf, _ = eot_model
    stride = hparams["n_ctx"] - 1 if stride == "n_ctx - 1" else stride
    ids = np.random.default_rng(n).integers(0, 50000, size=n).tolist()
    logprobs = gpt2.score(ids, params, hparams["n_head"], stride=stride)
    expected, ppl = hf_window_logprobs(hf, ids, hparams["n_ctx"], stride or hparams["n_ctx"] // 2)
    assert logprobs.shape == (n - 1,) and logprobs.dtype == np.float32
    np.testing.assert_allclose(logprobs, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.exp(-logprobs.mean()), ppl, rtol=1e-4)


@pytest.mark.parametrize(
    "ids, stride, message",
    [([464], None, "scoring needs at least 2 tokens"), ([464, 3290], 0, "stride must be a whole number from 1"),
     ([464, 3290], 10**6, "stride must be a whole number from 1"), ([464, 60000], None, "token id 60000")],
)
def test_score_rejects_bad_input(eot_model, ids, stride, message):
    hparams, params, _, _ = eot_model
    with pytest.raises(ValueError, match=message):
        gpt2.score(ids, params, hparams["n_head"], stride=stride)


def test_stride_must_leave_every_token_some_context(eot_model):
    hparams, params, _, _ = eot_model
    n_ctx = hparams["n_ctx"]
    with pytest.raises(ValueError, match=rf"from 1 to n_ctx - 1 \({n_ctx - 1}\), got {n_ctx}"):
        gpt2.score(list(range(3 * n_ctx)), params, hparams["n_head"], stride=n_ctx)


# Long prompts

def naive_sliding_greedy(prompt, params, n_head, n_tokens):
    """The documented rule, with no cache: keep the last n_ctx tokens, then the last n_ctx // 2 when full."""
    n_ctx = len(params["wpe"])
    window, out = list(prompt[-n_ctx:]), []
    for _ in range(n_tokens):
        out.append(int(np.argmax(gpt2.gpt2(window, **params, n_head=n_head)[-1])))
        window.append(out[-1])
        if len(window) > n_ctx:
            window = window[-(n_ctx // 2):]
    return out


@pytest.mark.parametrize("n_prompt", [10, 128, 200])
def test_slide_goes_past_the_context(eot_model, n_prompt):
    hparams, params, _, _ = eot_model
    n_ctx = hparams["n_ctx"]
    prompt = np.random.default_rng(n_prompt).integers(0, 50000, size=n_prompt).tolist()
    n_tokens = n_ctx + 20
    with pytest.raises(ValueError, match="beyond the model's context"):
        gpt2.generate(prompt, params, hparams["n_head"], n_tokens=n_tokens)
    out = gpt2.generate(prompt, params, hparams["n_head"], n_tokens=n_tokens, slide=True, stop_at_eot=False)
    assert out == naive_sliding_greedy(prompt, params, hparams["n_head"], n_tokens)


def test_a_batch_of_a_small_vocabulary_pads_with_an_id_it_has():
    """A model whose vocabulary stops below 50,256 (a fine-tune's own tokenizer) still takes ragged batches."""
    hparams = dict(SHAPES["tiny"], n_vocab=400)
    params = random_params(hparams, seed=2)
    prompts = [[5, 17, 300, 2], [399], [42, 7]]
    rows = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=6)
    assert rows == [gpt2.generate(p, params, hparams["n_head"], n_tokens=6) for p in prompts]
