"""The generation loop: prompts in, one next id per row per step out, with a KV cache and sliding windows.

It knows nothing of the model but a `forward` function, and nothing of how a token is chosen but a `choose`
function (decoding.py): gpt2.generate_stream hands it both.
"""
import numpy as np

from decoding import EOT
from kvcache import merge_rows


def steps(prompts, forward, n_tokens, stop_at_eot, n_ctx, choose):
    """The next id of every row, step by step (None once a row has ended), as choose(logits) picks them.

    forward(tokens [B, n], kvcache, mask) -> (logits [B, 1, n_vocab], kvcache) is the model (gpt2() with
    last_only). Each row's window, the tokens its cache holds, slides on its own schedule when it would pass
    n_ctx (only with slide: the caller refused the rest), exactly as the row would alone.
    """
    windows = [p[-n_ctx:] for p in prompts]
    tokens, mask = left_padded(windows)
    logits, cache = forward(tokens, [], mask)
    ended = np.zeros(len(prompts), dtype=bool)
    for step in range(n_tokens):
        next_ids = np.array([choose(row) for row in logits[:, -1]])  # [B]
        yield [None if e else int(i) for e, i in zip(ended, next_ids)]
        ended |= (next_ids == EOT) & stop_at_eot
        if ended.all() or step == n_tokens - 1:
            return
        for window, i in zip(windows, next_ids):
            window.append(int(i))
        if mask is not None:
            mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=bool)], axis=1)
        full = [r for r, window in enumerate(windows) if len(window) > n_ctx]
        if not full:  # the usual step: one new position per row, through the cache
            logits, cache = forward(next_ids[:, None], cache, mask)
        else:
            logits, cache, mask = slide(windows, full, next_ids, cache, mask, forward, n_ctx)


def slide(windows, full, next_ids, cache, mask, forward, n_ctx):
    """A step in which the rows `full` have more than n_ctx tokens: each of them starts again from its most
    recent n_ctx // 2 tokens, read afresh, while the other rows take their new token through the cache.
    -> (logits [B, 1, n_vocab], the cache of every row, its mask)."""
    B = len(windows)
    rest = [r for r in range(B) if r not in full]
    parts = []
    if rest:
        rest_mask = (np.ones((B, cache.n_past + 1), dtype=bool) if mask is None else mask)[rest]
        start = int(rest_mask.any(axis=0).argmax())  # the columns before are padding in every row of the rest
        rest_mask = rest_mask[:, start:]
        rest_logits, rest_cache = forward(next_ids[rest, None], cache.take(rest, start), rest_mask)
        parts.append((rest, rest_cache, rest_mask))
    for r in full:
        windows[r] = windows[r][-(n_ctx // 2):]
    tokens, full_mask = left_padded([windows[r] for r in full])
    full_logits, full_cache = forward(tokens, [], full_mask)
    parts.append((full, full_cache, np.ones(tokens.shape, dtype=bool) if full_mask is None else full_mask))
    logits = np.empty((B, *full_logits.shape[1:]), dtype=full_logits.dtype)
    logits[full] = full_logits
    if rest:
        logits[rest] = rest_logits
    cache, mask = merge_rows(parts, B, n_ctx)
    return logits, cache, mask


def left_padded(rows):
    """Rows of ids of any lengths -> (tokens [B, width], mask [B, width] False at padding, or None if none is).

    [[1, 2, 3], [4]] -> ([[1, 2, 3], [EOT, EOT, 4]], [[True, True, True], [False, False, True]])
    """
    width = max(map(len, rows))
    tokens = np.array([[EOT] * (width - len(row)) + list(row) for row in rows])
    if all(len(row) == width for row in rows):
        return tokens, None
    return tokens, np.array([[False] * (width - len(row)) + [True] * len(row) for row in rows])
