"""The forward pass and greedy decoding against HuggingFace transformers on the same weights."""
import sys
import warnings

import numpy as np
import pytest
import torch

import beam
import decoding
import generation
import gpt2
import kvcache
import utils
from conftest import SHAPES, hf_model

PROMPTS = [
    [464, 3290],  # "The dog"
    [31373, 995],  # "hello world"
    [40, 1101, 257, 1332, 13, 383, 2068, 7586, 21831],
    [50256],
    list(range(1000, 31000, 1000)),  # 30 tokens
]


@pytest.fixture(scope="module", params=list(SHAPES))
def model(request, checkpoints):
    """(hparams, params loaded from the checkpoint on disk, the HF reference built from the written arrays)."""
    models_dir, model_size, hparams, written = checkpoints[request.param]
    model_dir = models_dir / model_size
    params = utils.load_gpt2_params_from_tf_ckpt(utils.checkpoint_prefix(model_dir), hparams)
    return hparams, params, hf_model(hparams, written)


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].numpy()


def test_layer_by_layer_matches_hf(model):
    hparams, params, hf = model
    ids = PROMPTS[2]
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_hidden_states=True)
    ref = [h[0].numpy() for h in out.hidden_states]  # embeddings, then each block; HF applies ln_f to the last

    x = params["wte"][ids] + params["wpe"][: len(ids)]
    np.testing.assert_allclose(x, ref[0], rtol=1e-4, atol=1e-4)
    x = x[None]  # a batch of one
    *inner, last = params["blocks"]
    for i, block in enumerate(inner):
        x = gpt2.transformer_block(x, **block, n_head=hparams["n_head"])
        np.testing.assert_allclose(x[0], ref[i + 1], rtol=1e-4, atol=1e-4, err_msg=f"block {i}")
    x = gpt2.transformer_block(x, **last, n_head=hparams["n_head"])
    np.testing.assert_allclose(gpt2.layer_norm(x[0], **params["ln_f"]), ref[-1], rtol=1e-4, atol=1e-4)
    logits = gpt2.gpt2(ids, **params, n_head=hparams["n_head"])
    assert logits.shape == (len(ids), hparams["n_vocab"]) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, out.logits[0].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda p: f"{len(p)}tokens")
def test_greedy_matches_hf_generate(model, prompt):
    hparams, params, hf = model
    n_tokens = 20
    ids = torch.tensor([prompt])
    with torch.no_grad():  # an explicit mask: HF would otherwise take a prompt of 50256 for padding
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens, do_sample=False)
    expected = expected[0, len(prompt) :]
    caller_list = list(prompt)
    out = gpt2.generate(caller_list, params, hparams["n_head"], n_tokens=n_tokens)
    assert out == expected.tolist()
    assert caller_list == prompt, "generate must not change the caller's list"
    assert all(type(i) is int for i in out)


def test_greedy_margins_are_far_above_rounding(model):
    """The random weights give peaked distributions, so the greedy comparisons above mean something."""
    hparams, params, hf = model
    logits = gpt2.gpt2(PROMPTS[4], **params, n_head=hparams["n_head"])
    top2 = np.sort(logits, axis=-1)[:, -2:]
    assert np.min(top2[:, 1] - top2[:, 0]) > 1e-3


def test_cached_decoding_equals_full_recompute(model):
    hparams, params, _ = model
    ids = list(PROMPTS[2])
    logits, kvcache = gpt2.gpt2(ids, **params, n_head=hparams["n_head"], kvcache=[])
    for step in range(15):
        full = gpt2.gpt2(ids, **params, n_head=hparams["n_head"])
        np.testing.assert_allclose(logits[-1], full[-1], rtol=1e-4, atol=1e-4, err_msg=f"step {step}")
        ids.append(int(np.argmax(full[-1])))
        before = [k.copy() for k, _ in kvcache]
        logits, new_cache = gpt2.gpt2(ids[-1:], **params, n_head=hparams["n_head"], kvcache=kvcache)
        assert all(np.array_equal(k, b) for (k, _), b in zip(kvcache, before)), "the cache passed in changed"
        assert new_cache[0][0].shape == (1, hparams["n_head"], len(ids), hparams["n_embd"] // hparams["n_head"])
        kvcache = new_cache


def test_cache_in_several_chunks(model):
    """A prompt fed in pieces through the cache gives the logits of feeding it whole."""
    hparams, params, _ = model
    ids = PROMPTS[4]
    full = gpt2.gpt2(ids, **params, n_head=hparams["n_head"])
    kvcache, chunks = [], []
    for start in range(0, len(ids), 7):
        logits, kvcache = gpt2.gpt2(ids[start : start + 7], **params, n_head=hparams["n_head"], kvcache=kvcache)
        chunks.append(logits)
    np.testing.assert_allclose(np.concatenate(chunks), full, rtol=1e-4, atol=1e-4)


def float64_arrays_in_forward_pass(run):
    """Run `run()` and list every float64 array or scalar that a function in gpt2.py holds or returns."""
    found = []

    def arrays(value):
        if isinstance(value, (list, tuple)):
            for v in value:
                yield from arrays(v)
        elif isinstance(value, dict):
            for v in value.values():
                yield from arrays(v)
        elif isinstance(value, (np.ndarray, np.generic)):
            yield value

    engine = {gpt2.__file__, kvcache.__file__, decoding.__file__, generation.__file__, beam.__file__}

    def profiler(frame, event, arg):
        if event == "return" and frame.f_code.co_filename in engine:
            for name, value in [*frame.f_locals.items(), ("<returned>", arg)]:
                if any(a.dtype == np.float64 for a in arrays(value)):
                    found.append(f"{frame.f_code.co_name}: {name}")

    sys.setprofile(profiler)
    try:
        run()
    finally:
        sys.setprofile(None)
    return found


def test_no_float64_anywhere_in_the_forward_pass(model):
    hparams, params, _ = model

    def run():
        gpt2.gpt2(PROMPTS[2], **params, n_head=hparams["n_head"])
        gpt2.generate(PROMPTS[0], params, hparams["n_head"], n_tokens=3)
        gpt2.generate([PROMPTS[0], PROMPTS[2]], params, hparams["n_head"], n_tokens=3, temperature=1.0, top_p=0.9)
        gpt2.score(PROMPTS[4], params, hparams["n_head"])
        controls = dict(repetition_penalty=1.2, no_repeat_ngram_size=2, bad_words_ids=[[11]], min_new_tokens=2, logprobs=2)
        gpt2.generate([PROMPTS[0], PROMPTS[2]], params, hparams["n_head"], n_tokens=3, temperature=0.8, top_k=5, **controls)
        gpt2.generate(PROMPTS[0], params, hparams["n_head"], n_tokens=3, num_beams=3, length_penalty=0.5, **controls)

    assert float64_arrays_in_forward_pass(run) == []


def test_float64_check_catches_an_upcast(model, monkeypatch):
    """The check above can fail: a float64 constant (picoGPT's bug under NumPy 2: np.sqrt(2 / np.pi)) is caught."""
    hparams, params, _ = model
    layer_norm = gpt2.layer_norm
    monkeypatch.setattr(gpt2, "layer_norm", lambda x, g, b, eps=1e-5, hook=None: layer_norm(x, g, b, np.sqrt(eps), hook))
    found = float64_arrays_in_forward_pass(lambda: gpt2.gpt2(PROMPTS[0], **params, n_head=hparams["n_head"]))
    assert "layer_norm: scale" in found


@pytest.mark.parametrize(
    "prompt, n_tokens, message",
    [
        ([464], 0, "n_tokens must be a whole number of at least 1"),
        ([464], 2.5, "n_tokens must be a whole number of at least 1"),
        ([], 5, "the prompt is empty"),
        ([464] * 30, 100, "the prompt (30 tokens) plus n_tokens (100) is 130 tokens, beyond the model's context of"),
        ([464, 50257], 5, "token id 50257 is not in the vocabulary [0, 50257)"),
        ([464, -1], 5, "token id -1 is not in the vocabulary"),
    ],
)
def test_generate_rejects_bad_requests(model, prompt, n_tokens, message):
    hparams, params, _ = model
    with pytest.raises(ValueError) as e:
        gpt2.generate(prompt, params, hparams["n_head"], n_tokens=n_tokens)
    assert message in str(e.value)


@pytest.mark.parametrize("n_past, n_seq", [(0, 50), (13, 30), (40, 1), (0, 1)])
@pytest.mark.parametrize("padded", [False, True])
def test_causal_attention_in_blocks_equals_the_textbook(n_past, n_seq, padded):
    """Query blocks that skip the keys they may not see, and mask only what some query may not see, give
    what one full masked softmax gives."""
    rng = np.random.default_rng(n_past)
    B, n_head, d, n_all = 2, 3, 8, n_past + n_seq
    q = rng.standard_normal((B, n_head, n_seq, d), dtype=np.float32)
    k, v = (rng.standard_normal((B, n_head, n_all, d), dtype=np.float32) for _ in range(2))
    real = np.ones((B, n_all), dtype=bool)
    real[1, : min(5, n_all - 1)] = not padded  # the second row is left-padded
    visible = np.tril(np.ones((n_seq, n_all), dtype=bool), k=n_past) & real[:, None, None, :]
    seen = np.broadcast_to(visible.any(axis=-1, keepdims=True), q.shape)  # padding queries see nothing: ignored
    scores = np.where(visible, q @ k.swapaxes(-1, -2) / np.float32(np.sqrt(d)), -np.inf)  # the textbook form
    with np.errstate(invalid="ignore"):
        textbook = decoding.softmax(scores) @ v
    for block in (1, 7, 16, 128):
        blocked = gpt2.causal_attention(q, k, v, real if padded else None, block=block)
        assert blocked.dtype == np.float32
        np.testing.assert_allclose(blocked[seen], textbook[seen], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "inputs, message",
    [([], "non-empty list of token ids"), ([1.5, 2.0], "non-empty list of token ids"), ([[1, 2], [3]], "equal length"),
     ([464, -1], r"token ids must be in \[0, 50257\), got -1 to 464"), ([50257], "got 50257 to 50257")],
)
def test_forward_pass_rejects_bad_ids(model, inputs, message):
    hparams, params, _ = model
    with pytest.raises(ValueError, match=message):
        gpt2.gpt2(inputs, **params, n_head=hparams["n_head"])


@pytest.mark.parametrize("n_rows", [1, 3, 8, 9])
def test_unembed_in_slices_equals_one_product(n_rows):
    """unembed's faster paths (a matrix-vector product a row and a slice, or a product a slice) give the
    logits of the one plain product x @ wte.T."""
    rng = np.random.default_rng(n_rows)
    wte = rng.standard_normal((gpt2.VOCAB_BLOCK * 2 + 17, 32), dtype=np.float32)  # a last slice that is not full
    x = rng.standard_normal((n_rows, 32), dtype=np.float32)
    logits = gpt2.unembed(x, wte)
    assert logits.shape == (n_rows, len(wte)) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, x @ wte.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gpt2.unembed(x[None], wte)[0], logits, rtol=1e-6, atol=1e-6)  # any leading axes


def test_gelu_by_exp_is_gpt2s_tanh_gelu():
    """x / (1 + exp(-2u)) is 0.5 x (1 + tanh(u)): equal to the textbook form (in float64) over a wide range, with
    no overflow warning where exp(-2u) is inf, and the same in blocks of rows as on one row."""
    x = np.concatenate([np.linspace(-100, 100, 20001), [-1e4, 1e4, 0.0]]).astype(np.float32)
    textbook = 0.5 * x.astype(np.float64) * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x.astype(np.float64) ** 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = gpt2.gelu(x[None])[0]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, textbook, rtol=1e-5, atol=1e-6)
    rows = np.random.default_rng(0).standard_normal((3 * gpt2.ROWS // 100 + 5, 100), dtype=np.float32) * 5
    assert rows.size > gpt2.ROWS  # several blocks
    np.testing.assert_array_equal(gpt2.gelu(rows), np.concatenate([gpt2.gelu(r[None]) for r in rows]))
