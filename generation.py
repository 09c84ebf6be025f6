"""The generation loops: prompts in, one next id per row per step out, with a KV cache; sliding windows;
several samples of one prompt from one prefill; beam search; the log-probs of what was chosen.

They know nothing of the model but a `forward` function, and nothing of how a token is chosen but a `choose`
function or the controls (decoding.py) and beam.py's bookkeeping: gpt2.generate_stream hands them over.
"""
import numpy as np

from beam import BeamSearch
from decoding import Controls, log_softmax, token_logprob
from kvcache import merge_rows


def steps(prompts, forward, n_tokens, eos, n_ctx, choose, copies=1, n_logprobs=None):
    """The next id of every row, step by step (None once a row has ended: after n_tokens, or after the end
    token `eos` unless it is None), as `choose` picks them.

    forward(tokens [B, n], kvcache, mask) -> (logits [B, 1, n_vocab], kvcache) is the model (gpt2() with
    last_only). choose(ids, n_new, logits [n_vocab]) -> (id, the processed logits it chose from) (see
    decoding.chooser), where ids is all of the row's tokens so far: its whole prompt, then n_new generated.
    `copies` rows continue each prompt, one after another (n samples): each prompt is read once, and its cache
    copied for each of its rows. With n_logprobs, each id comes as (id, decoding.Logprob with that many top
    tokens). Each row's window, the tokens its cache holds, slides on its own schedule when it would pass
    n_ctx (only with slide: the caller refused the rest), exactly as the row would alone.
    """
    windows = [p[-n_ctx:] for p in prompts]
    tokens, mask = left_padded(windows)
    logits, cache = forward(tokens, [], mask)
    if copies > 1:  # one prefill, its cache copied for every sample
        rows = np.repeat(np.arange(len(prompts)), copies)
        logits, cache, mask = logits[rows], cache.take(rows), None if mask is None else mask[rows]
        prompts, windows = [prompts[r] for r in rows], [list(windows[r]) for r in rows]
    history = [list(p) for p in prompts]  # what the controls see: the whole prompt, not only the window
    ended = np.zeros(len(prompts), dtype=bool)
    for step in range(n_tokens):
        next_ids, out = pick(choose, history, step, logits[:, -1], ended, n_logprobs)
        yield out
        ended |= next_ids == eos
        if ended.all() or step == n_tokens - 1:
            return
        for window, ids, i in zip(windows, history, next_ids):
            window.append(int(i))
            ids.append(int(i))
        if mask is not None:
            mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=bool)], axis=1)
        full = [r for r, window in enumerate(windows) if len(window) > n_ctx]
        if not full:  # the usual step: one new position per row, through the cache
            logits, cache = forward(next_ids[:, None], cache, mask)
        else:
            logits, cache, mask = slide(windows, full, next_ids, cache, mask, forward, n_ctx)


def pick(choose, history, step, logits, ended, n_logprobs=None):  # [B, n_vocab] -> [B], B outputs
    """One step's choice for every row, in row order (so a shared random generator draws as it would alone):
    (the ids chosen, what steps() yields for them: None for a row that has ended, else the id, or with
    n_logprobs the (id, decoding.Logprob) pair). `history` holds each row's tokens so far, `step` of them new."""
    chosen = [choose(ids, step, row) for ids, row in zip(history, logits)]
    next_ids = np.array([i for i, _ in chosen])  # [B]
    out = [None if e else int(i) for e, i in zip(ended, next_ids)]
    if n_logprobs is not None:
        out = [i if i is None else (i, token_logprob(log_softmax(row), i, n_logprobs, log_softmax(processed)[i]))
               for i, row, (_, processed) in zip(out, logits, chosen)]
    return next_ids, out


def beam_steps(prompts, forward, n_tokens, eos, controls, num_beams, length_penalty=1.0,
               early_stopping=False, num_return_sequences=1, n_logprobs=None):
    """Beam search for every prompt in one batch, yielding as steps() does the ids of each prompt's
    num_return_sequences best hypotheses, one after another; but only once every search is done, as which
    beam wins is known only then. Each prompt is read once, and its cache copied as its beams branch; a prompt
    whose search is done leaves the batch. `controls` (decoding.Controls) process the log-probs, as in HF.
    """
    tokens, mask = left_padded(prompts)
    logits, cache = forward(tokens, [], mask)
    searches = [BeamSearch(num_beams, n_tokens, length_penalty, early_stopping, eos) for _ in prompts]
    for step in range(n_tokens):
        model = log_softmax(logits[:, -1])  # [rows, n_vocab]: each search's running beams, search after search
        origins, next_ids, first = [], [], 0
        for prompt, search in [(p, s) for p, s in zip(prompts, searches) if not s.done]:
            beams = model[first : first + len(search.tokens)]
            processed = beams if controls == Controls() else np.stack(
                [controls(prompt + ids, step, row) for ids, row in zip(search.tokens, beams)])

            def extra(b, i, beams=beams, processed=processed):  # the Logprob kept beside token i of beam b
                return token_logprob(beams[b], i, n_logprobs, processed[b, i])

            continued = search.step(processed, extra if n_logprobs is not None else None)
            if not search.done:
                origins += list(first + continued)
                next_ids += [ids[-1] for ids in search.tokens]
            first += len(beams)
        if not origins:
            break
        if mask is not None:
            mask = np.concatenate([mask[origins], np.ones((len(origins), 1), dtype=bool)], axis=1)
        logits, cache = forward(np.array(next_ids)[:, None], cache.take(origins, capacity=cache.n_past + 1), mask)
    best = [hypothesis for search in searches for hypothesis in search.best(num_return_sequences)]
    for step in range(max(len(ids) for _, ids, _ in best)):
        yield [None if step >= len(ids) else ids[step] if n_logprobs is None else (ids[step], extras[step])
               for _, ids, extras in best]


def collect(steps, n_rows, with_logprobs):
    """The rows of ids that steps yield -> [row, ...], or ([row, ...], [row's Logprobs, ...]) with_logprobs."""
    rows, logprobs = [[] for _ in range(n_rows)], [[] for _ in range(n_rows)]
    for step in steps:
        for row, row_logprobs, token in zip(rows, logprobs, step):
            if token is not None:
                token_id, logprob = token if with_logprobs else (token, None)
                row.append(token_id)
                row_logprobs.append(logprob)
    return (rows, logprobs) if with_logprobs else rows


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

    [[1, 2, 3], [4]] -> ([[1, 2, 3], [0, 0, 4]], [[True, True, True], [False, False, True]])
    The padding is id 0, which every vocabulary has; it is never attended to, so any id would do.
    """
    width = max(map(len, rows))
    tokens = np.array([[0] * (width - len(row)) + list(row) for row in rows])
    if all(len(row) == width for row in rows):
        return tokens, None
    return tokens, np.array([[False] * (width - len(row)) + [True] * len(row) for row in rows])
