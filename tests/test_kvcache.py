"""The KV cache keeps its promise: a cache passed in is never changed as its holder sees it, so a shared
prefix can be continued several ways; decoding writes into preallocated room instead of copying."""
import numpy as np
import pytest

import gpt2
import kvcache
from conftest import SHAPES, random_params

HPARAMS = SHAPES["tiny"]
N_HEAD = HPARAMS["n_head"]


@pytest.fixture(scope="module")
def params():
    return random_params(HPARAMS, seed=3)


def logits_alone(params, ids):
    return gpt2.gpt2(ids, **params, n_head=N_HEAD)[-1]


def test_a_prefix_continued_twice(params):
    prefix, a, b = [464, 3290, 318, 257], [1332, 13], [2068, 7586, 21831]
    _, shared = gpt2.gpt2(prefix, **params, n_head=N_HEAD, kvcache=[])
    logits_a, cache_a = gpt2.gpt2(a, **params, n_head=N_HEAD, kvcache=shared)
    keys_a = [k.copy() for k, _ in cache_a]
    logits_b, cache_b = gpt2.gpt2(b, **params, n_head=N_HEAD, kvcache=shared)  # the same prefix, another way
    np.testing.assert_allclose(logits_a[-1], logits_alone(params, prefix + a), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits_b[-1], logits_alone(params, prefix + b), rtol=1e-4, atol=1e-4)
    assert all(np.array_equal(k, before) for (k, _), before in zip(cache_a, keys_a)), "continuing b changed a"
    assert (shared.n_past, cache_a.n_past, cache_b.n_past) == (4, 6, 7)
    # and each goes on as if it were alone
    more_a, _ = gpt2.gpt2([11], **params, n_head=N_HEAD, kvcache=cache_a)
    more_b, _ = gpt2.gpt2([11], **params, n_head=N_HEAD, kvcache=cache_b)
    np.testing.assert_allclose(more_a[-1], logits_alone(params, prefix + a + [11]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(more_b[-1], logits_alone(params, prefix + b + [11]), rtol=1e-4, atol=1e-4)


def test_decoding_writes_into_the_same_buffers(params):
    """The usual step, continuing the newest cache, copies nothing: the new cache shares the old one's memory,
    except when the buffers are full and grow, by doubling (so 40 steps copy a handful of times, not 40)."""
    _, cache = gpt2.gpt2([464, 3290], **params, n_head=N_HEAD, kvcache=[])
    copies = 0
    for token in range(40):
        _, new = gpt2.gpt2([token], **params, n_head=N_HEAD, kvcache=cache)
        copies += not np.shares_memory(new[0][0], cache[0][0])
        cache = new
        assert cache[0][0].base.shape[2] <= 2 * cache.n_past  # room for at most as many positions again
    assert 1 <= copies <= 5
    _, fork = gpt2.gpt2([13], **params, n_head=N_HEAD, kvcache=_older(params))
    assert fork.n_past == 4


def _older(params):
    _, cache = gpt2.gpt2([464, 3290, 318], **params, n_head=N_HEAD, kvcache=[])
    gpt2.gpt2([257], **params, n_head=N_HEAD, kvcache=cache)  # claims the room after position 3
    return cache


def test_a_claimed_cache_is_copied_not_overwritten(params):
    cache = _older(params)
    _, first = gpt2.gpt2([257], **params, n_head=N_HEAD, kvcache=cache)
    _, second = gpt2.gpt2([1332], **params, n_head=N_HEAD, kvcache=cache)
    assert not np.shares_memory(first[0][0], second[0][0])
    assert not np.array_equal(first[0][0][..., -1, :], second[0][0][..., -1, :])


def test_views_are_read_only(params):
    _, cache = gpt2.gpt2([464, 3290], **params, n_head=N_HEAD, kvcache=[])
    k, v = cache[0]
    with pytest.raises(ValueError, match="read-only"):
        k[...] = 0
    assert len(cache) == HPARAMS["n_layer"] and k.shape == (1, N_HEAD, 2, HPARAMS["n_embd"] // N_HEAD)


def test_take_copies_rows_to_continue_one_prompt_several_ways(params):
    prompt = [464, 3290, 318]
    _, cache = gpt2.gpt2(prompt, **params, n_head=N_HEAD, kvcache=[])
    three = cache.take([0, 0, 0])
    logits, _ = gpt2.gpt2([[257], [1332], [13]], **params, n_head=N_HEAD, kvcache=three)
    for row, token in zip(logits, (257, 1332, 13)):
        np.testing.assert_allclose(row[-1], logits_alone(params, prompt + [token]), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="below the batch size 1"):
        cache.take([1])


def test_a_cache_of_another_shape_is_refused(params):
    _, cache = gpt2.gpt2([[464, 3290], [318, 257]], **params, n_head=N_HEAD, kvcache=[])
    with pytest.raises(ValueError, match="not for a batch of 1 of this model"):
        gpt2.gpt2([13], **params, n_head=N_HEAD, kvcache=cache)
    with pytest.raises(ValueError, match=r"kvcache must be \[\] \(to start one\) or a KVCache"):
        gpt2.gpt2([13], **params, n_head=N_HEAD, kvcache=[(1, 2)])


def test_merge_rows_right_aligns_and_pads_with_zeros(params):
    _, long = gpt2.gpt2([464, 3290, 318, 257], **params, n_head=N_HEAD, kvcache=[])
    _, short = gpt2.gpt2([[13], [11]], **params, n_head=N_HEAD, kvcache=[])
    merged, mask = kvcache.merge_rows([([1], long, np.ones((1, 4), bool)), ([0, 2], short, np.ones((2, 1), bool))], 3, 16)
    assert mask.tolist() == [[False] * 3 + [True], [True] * 4, [False] * 3 + [True]]
    k = merged[0][0]
    np.testing.assert_array_equal(k[1], long[0][0][0])
    np.testing.assert_array_equal(k[0, :, 3], short[0][0][0, :, 0])
    assert not k[0, :, :3].any() and np.isfinite(k).all()


def test_kv_cache_bytes():
    assert kvcache.kv_cache_bytes(n_layer=12, n_embd=768, batch_size=1, n_positions=1024) == 75_497_472


# Sliding windows in a batch: each row on its own schedule (issue 11, defect 2)

@pytest.fixture(scope="module")
def short_context():
    hparams = dict(SHAPES["tiny"], n_ctx=64)
    return hparams, random_params(hparams, seed=5)


@pytest.mark.parametrize("lengths", [(60, 40), (64, 10, 33), (5, 70, 64, 21)], ids=str)
def test_batch_rows_slide_as_each_would_alone(short_context, lengths):
    hparams, params = short_context
    rng = np.random.default_rng(sum(lengths))
    prompts = [rng.integers(0, 50000, size=n).tolist() for n in lengths]
    n_tokens = 90  # past two slides for every row
    rows = gpt2.generate(prompts, params, hparams["n_head"], n_tokens=n_tokens, slide=True, stop_at_eot=False)
    alone = [gpt2.generate(p, params, hparams["n_head"], n_tokens=n_tokens, slide=True, stop_at_eot=False)
             for p in prompts]
    assert rows == alone


@pytest.mark.parametrize("padded", [False, True])
def test_last_only_carries_only_the_last_position_through_the_last_block(params, padded):
    """last_only skips the last block's work for every other position, yet caches every position's keys."""
    rows = [[464, 3290, 318, 257, 1332], [2068, 7586, 21831, 13, 11]]
    mask = np.array([[False, False, True, True, True], [True] * 5]) if padded else None
    full, cache_full = gpt2.gpt2(rows, **params, n_head=N_HEAD, kvcache=[], mask=mask)
    last, cache_last = gpt2.gpt2(rows, **params, n_head=N_HEAD, kvcache=[], mask=mask, last_only=True)
    assert last.shape == (2, 1, HPARAMS["n_vocab"])
    np.testing.assert_allclose(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)
    for (k1, v1), (k2, v2) in zip(cache_full, cache_last):
        np.testing.assert_array_equal(k1, k2)
        np.testing.assert_array_equal(v1, v2)


def test_take_with_a_capacity_reorders_rows_and_goes_on(params):
    """Beam search's step: rows reordered into buffers with room for one more position, continued through the cache."""
    prompts = [[464, 3290, 318], [1332, 13, 2068]]
    _, cache = gpt2.gpt2(prompts, **params, n_head=N_HEAD, kvcache=[])
    taken = cache.take([1, 0, 1], capacity=cache.n_past + 1)
    assert taken.n_past == 3 and taken._buffers.capacity == 4
    logits, more = gpt2.gpt2([[11], [11], [257]], **params, n_head=N_HEAD, kvcache=taken)
    assert np.shares_memory(more[0][0], taken[0][0])  # the new position went into the room left for it
    for row, ids in zip(logits, (prompts[1] + [11], prompts[0] + [11], prompts[1] + [257])):
        np.testing.assert_allclose(row[-1], logits_alone(params, ids), rtol=1e-4, atol=1e-4)
    _, again = gpt2.gpt2([[5], [5], [5]], **params, n_head=N_HEAD, kvcache=more)  # full: a copy, with room for n_ctx
    assert again.n_past == 5 and not np.shares_memory(again[0][0], more[0][0])
