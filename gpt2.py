"""GPT-2 in pure NumPy: the forward pass with its KV cache, generation (greedy or sampled, batched,
streamed) and scoring.

The model is OpenAI's GPT-2 (openai/gpt-2, src/model.py), written as plain functions in the way of
picoGPT: every function's parameters are named after the checkpoint's keys, so a block is called as
`transformer_block(x, **block, n_head=n_head, mask=mask)`. Everything is float32, as the weights are.
How the next token is chosen lives in decoding.py, ids -> text in textstream.py, and the command line,
`python gpt2.py "Alan Turing theorized" --n_tokens 40`, in cli.py.
"""
import math

import numpy as np

import generation
from beam import check_search
from decoding import EOT, Controls, check_logprobs, check_sampling, chooser, end_token, is_whole, softmax, top_indices  # noqa: F401 (EOT: gpt2.EOT)
from kvcache import KVCache, room

# The tanh approximation of GELU that GPT-2 was trained with. A float32 constant on purpose:
# np.sqrt(2 / np.pi) is a float64 scalar, and under NumPy 2 it would turn every activation float64.
GELU_C = np.float32(math.sqrt(2 / math.pi))
# The score of a key a query may not see. Finite, so that a query whose keys are all padding
# gets a harmless uniform average instead of NaN; in any other row exp() makes it exactly 0.
MASKED = np.float32(-1e10)
NOTHING_HIDDEN = np.zeros((1, 0), dtype=np.float32)  # attention()'s `hidden` when every query sees every key
ROWS = 1 << 16  # elements in a block of rows that element-wise work does at a time, so that it stays in cache
VOCAB_BLOCK = 4096  # rows of wte in a slice of the unembedding, 12 MB for 124M: it stays in the CPU's L3 cache


def gelu(x):  # [..., n] -> [..., n]
    """0.5 * x * (1 + tanh(u)) with u = GELU_C * (x + 0.044715 * x**3), GPT-2's GELU, computed as
    x / (1 + exp(-2u)): the same function (0.5 * (1 + tanh(u)) is sigmoid(2u)), as NumPy's float32
    exp is twice as fast as its tanh. In blocks of rows, in place on one fresh array."""
    out = np.empty_like(x)
    with np.errstate(over="ignore"):  # x below about -10: exp(-2u) is inf, and x / inf is -0, GELU's limit
        for rows, y in zip(row_blocks(x), row_blocks(out)):
            np.multiply(rows, rows, out=y)  # y becomes -2u, step by step
            y *= np.float32(-2 * 0.044715) * GELU_C
            y += np.float32(-2) * GELU_C
            y *= rows
            np.exp(y, out=y)
            y += 1
            np.divide(rows, y, out=y)
    return out


def row_blocks(x):  # [..., n] -> [rows, n] views, together all of x
    if x.size <= ROWS:
        return [x]
    x = x.reshape(-1, x.shape[-1])
    step = max(1, ROWS // x.shape[1])
    return [x[i : i + step] for i in range(0, len(x), step)]


def layer_norm(x, g, b, eps=1e-5, hook=None):  # [..., n_embd] -> [..., n_embd]
    n_embd = x.shape[-1]  # sum / n_embd rather than mean(): the same, without mean's Python-level overhead
    x = x - x.sum(axis=-1, keepdims=True) / n_embd
    scale = np.sqrt((x * x).sum(axis=-1, keepdims=True) / n_embd + eps)  # [..., 1]
    if hook: scale = hook("hook_scale", scale)
    x /= scale
    if hook:  # TransformerLens's hook_normalized comes before the gain and bias
        return hook("hook_normalized", x) * g + b  # a new array: the one the hook saw stays as it was
    x *= g
    x += b
    return x


def linear(x, w, b):  # [..., nx] @ [nx, nf] + [nf] -> [..., nf]
    # As one 2D product: NumPy would run [B, n_seq, nx] @ w as B products, each reading all of w.
    out = x.reshape(-1, x.shape[-1]) @ w
    out += b
    return out.reshape(*x.shape[:-1], w.shape[-1])


def ffn(x, c_fc, c_proj, hook=None):  # [B, n_seq, n_embd] -> [B, n_seq, n_embd]
    h = linear(x, **c_fc)  # [B, n_seq, 4*n_embd]
    if hook: h = hook("mlp.hook_pre", h)
    h = gelu(h)
    if hook: h = hook("mlp.hook_post", h)
    return linear(h, **c_proj)


def attention(q, k, v, hidden, hook=None):  # [B, n_head, n_q, d], [B, n_head, n_k, d] x2, [B|1, 1, n_q, n_m] -> [B, n_head, n_q, d]
    """Softmax attention of the queries over the keys. `hidden` is added to the scores of the LAST n_m keys:
    MASKED where a query may not see that key, 0 where it may; every query sees all the keys before those.
    n_m is 0 for one new token of an unpadded batch, the block's own width for a block of a causal prompt
    (its diagonal), and n_k when rows are padded."""
    scores = (q * np.float32(1 / math.sqrt(q.shape[-1]))) @ k.swapaxes(-1, -2)  # [B, n_head, n_q, n_k]
    if hidden.shape[-1]:
        scores[..., k.shape[-2] - hidden.shape[-1] :] += hidden
    if hook:  # the pattern, whole, for the hooks to see (and change)
        scores = hook("attn.hook_attn_scores", scores)
        return hook("attn.hook_pattern", softmax(scores)) @ v
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores, out=scores)  # softmax's numerator, in place: scores is a fresh array
    # softmax(scores) @ v, dividing the smaller [n_q, d] result rather than the [n_q, n_k] weights
    return (weights @ v) / weights.sum(axis=-1, keepdims=True)


def causal_attention(q, k, v, mask, block=128, hook=None):  # [B, n_head, n_seq, d], [B, n_head, n_all, d] x2, [B, n_all] | None -> [B, n_head, n_seq, d]
    """Attention of the last n_seq positions, each over the keys up to itself that are not padding (mask
    False; None when no row is padded). A block of queries at a time: each reads only the keys up to its
    own last position, which skips the upper triangle of a long prompt and keeps the scores in cache."""
    n_seq, n_all = q.shape[-2], k.shape[-2]
    n_past = n_all - n_seq
    block = n_seq if hook else block  # hooks see the whole pattern
    if n_seq == 1 and mask is None:  # one new token, the usual decoding step: it sees every key
        return attention(q, k, v, NOTHING_HIDDEN, hook)
    out = np.empty_like(q)
    for start in range(0, n_seq, block):
        stop = min(start + block, n_seq)
        end = n_past + stop  # one past the last key this block's queries may see
        n_q = stop - start
        if mask is None:  # only the block's own keys, its diagonal, are hidden from some of its queries
            visible = np.tri(n_q, dtype=bool)
        else:  # query i, at column n_past + start + i, sees the keys up to that column that are not padding
            visible = np.tri(n_q, end, n_past + start, dtype=bool) & mask[:, None, None, :end]
        hidden = np.where(visible, np.float32(0), MASKED)  # [B|1, 1, n_q, n_m]
        out[..., start:stop, :] = attention(q[..., start:stop, :], k[..., :end, :], v[..., :end, :], hidden, hook)
    return out


def mha(x, c_attn, c_proj, n_head, mask=None, kv=None, n_out=None, hook=None):  # [B, n_seq, n_embd] -> [B, n_out, n_embd]
    """Multi-head causal self-attention. kv is this block's (k, v) [B, n_head, n_past + n_seq, n_embd/n_head]
    from the KV cache, if any; the keys and values of the n_seq new positions are written into its last n_seq.
    `n_out` asks for the output of the last n_out positions only (all n_seq by default)."""
    B, n_seq, n_embd = x.shape
    qkv = linear(x, **c_attn)  # [B, n_seq, 3*n_embd]
    # All heads at once: [B, n_seq, 3*n_embd] -> [3, B, n_head, n_seq, n_embd/n_head]
    q, k, v = qkv.reshape(B, n_seq, 3, n_head, n_embd // n_head).transpose(2, 0, 3, 1, 4)
    if hook: q, k, v = (hook(f"attn.hook_{name}", a) for name, a in zip("qkv", (q, k, v)))
    if kv is not None:  # the cache's room for these positions, after the positions before them
        kv[0][:, :, -n_seq:], kv[1][:, :, -n_seq:] = k, v
        k, v = kv
    q = q[..., -n_out:, :] if n_out else q  # every position's keys and values, but only these queries
    z = causal_attention(q, k, v, mask, hook=hook)  # [B, n_head, n_out, n_embd/n_head]
    if hook: z = hook("attn.hook_z", z)
    return linear(z.transpose(0, 2, 1, 3).reshape(B, z.shape[2], n_embd), **c_proj)  # heads merged


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head, mask=None, kv=None, n_out=None, hook=None):  # [B, n_seq, n_embd] -> [B, n_out, n_embd]
    if hook: x = hook("hook_resid_pre", x)
    a = mha(layer_norm(x, **ln_1, hook=prefixed(hook, "ln1.")), **attn, n_head=n_head, mask=mask, kv=kv, n_out=n_out, hook=hook)
    if hook: a = hook("hook_attn_out", a)
    x = x[:, -a.shape[1]:] + a
    if hook: x = hook("hook_resid_mid", x)
    m = ffn(layer_norm(x, **ln_2, hook=prefixed(hook, "ln2.")), **mlp, hook=hook)
    if hook: m = hook("hook_mlp_out", m)
    x = x + m
    if hook: x = hook("hook_resid_post", x)
    return x


def prefixed(hook, prefix):
    """The hook, called with prefix + name: how a block's own names become "blocks.3.attn.hook_q"."""
    return hook and (lambda name, x: hook(prefix + name, x))


def transformer(inputs, wte, wpe, blocks, n_head, kvcache=None, mask=None, n_out=None, hook=None):  # [B, n_seq] -> [B, n_out, n_embd]
    """The residual stream after the last block, before ln_f, and the new KV cache (see gpt2()). With n_out, only
    the last n_out positions' stream: the last block then carries only those forward, as nothing reads the rest
    (a first token's whole prompt saves most of a block's work); every block still caches every position."""
    B, n_seq = inputs.shape
    d = wte.shape[1] // n_head
    if kvcache is not None and not (isinstance(kvcache, KVCache) or kvcache == []):
        raise ValueError("kvcache must be [] (to start one) or a KVCache that gpt2() returned")
    if kvcache and (kvcache.shape[:3] != (len(blocks), B, n_head) or kvcache.shape[4] != d):
        raise ValueError(f"this {kvcache!r} is not for a batch of {B} of this model "
                         f"({len(blocks)} blocks, {n_head} heads of {d})")
    n_past = kvcache.n_past if kvcache else 0
    n_all = n_past + n_seq
    if n_all > len(wpe):
        raise ValueError(f"{n_past} cached + {n_seq} new tokens exceed the context of {len(wpe)} (n_ctx)")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (B, n_all):
            raise ValueError(f"mask must have shape [B, n_past + n_seq] = {[B, n_all]}, got {list(mask.shape)}")
    if not kvcache:  # [] starts a cache with room to grow (it doubles when full); None one for this call alone
        kvcache = KVCache.empty(len(blocks), B, n_head, d, capacity=n_seq if kvcache is None else room(n_seq, len(wpe)))
    cache = kvcache.extended(n_seq, limit=len(wpe))

    # Positions count real tokens only: each row's first real token is at 0 however much padding precedes it.
    positions = np.arange(n_past, n_all)[None] if mask is None else np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, n_past:]
    embed, pos_embed = wte[inputs], wpe[positions]  # [B, n_seq, n_embd] each
    if hook: embed, pos_embed = hook("hook_embed", embed), hook("hook_pos_embed", pos_embed)
    x = embed + pos_embed
    for i, block in enumerate(blocks):
        x = transformer_block(x, **block, n_head=n_head, mask=mask, kv=cache.writable(i),
                              n_out=n_out if i == len(blocks) - 1 else None, hook=hook and prefixed(hook, f"blocks.{i}."))
    return x, cache


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head, lm_head=None, kvcache=None, mask=None, last_only=False, hook=None):
    """Logits for the token ids `inputs`: [n_seq] -> [n_seq, n_vocab], or [B, n_seq] -> [B, n_seq, n_vocab].

    Without `kvcache` this is picoGPT's function and returns the logits alone. With one, `inputs` are
    the tokens that follow those in the cache, and the call returns `(logits, kvcache)`: a new cache
    with them added; the one passed in is not changed, so it can be continued again (kvcache.py).
    Start with `kvcache=[]`.
    `mask` ([B, n_past + n_seq] bool, False at padding) lets rows of different lengths share a
    batch: padding is never attended to, and positions count real tokens only, so each row's
    first real token is at position 0 however much padding precedes it.
    `last_only` computes the logits of the last position alone ([..., 1, n_vocab]), all decoding needs.
    `lm_head` ([n_vocab, n_embd]) is the unembedding of a fine-tune that untied it from wte; GPT-2's own is wte.
    `hook(name, array) -> array` sees every intermediate value by its TransformerLens name and may replace it
    (lens.py builds on it); None, the default, costs nothing.
    """
    try:
        inputs = np.asarray(inputs)
    except ValueError:  # ragged lists
        inputs = np.asarray(None)
    single = inputs.ndim == 1
    inputs = inputs[None] if single else inputs  # [B, n_seq]
    if inputs.ndim != 2 or inputs.shape[1] == 0 or inputs.dtype.kind not in "iu":
        raise ValueError("inputs must be a non-empty list of token ids, or B such lists of equal length (pad with a mask)")
    if inputs.min() < 0 or inputs.max() >= len(wte):  # a negative id would silently index from the end
        raise ValueError(f"token ids must be in [0, {len(wte)}), got {inputs.min()} to {inputs.max()}")
    x, cache = transformer(inputs, wte, wpe, blocks, n_head, kvcache, mask, 1 if last_only else None, hook)
    x = layer_norm(x, **ln_f, hook=prefixed(hook, "ln_final."))
    logits = unembed(x, wte, lm_head)
    logits = logits[0] if single else logits
    return (logits, cache) if kvcache is not None else logits


def unembed(x, wte, lm_head=None):  # [..., n_embd] -> [..., n_vocab]
    """The logits of a (normalized) residual stream: the unembedding is tied to wte, as in GPT-2."""
    w = wte if lm_head is None else lm_head  # [n_vocab, n_embd]
    rows = x.reshape(-1, x.shape[-1])
    if len(rows) == 1:  # one row: a matrix-vector product, which reads w at full speed
        return (rows @ w.T).reshape(*x.shape[:-1], len(w))
    # OpenBLAS's product of a few rows with the 154 MB of wte.T (a transposed layout) runs at a fraction of
    # the speed one row's does. A slice of the vocabulary at a time stays in the CPU's cache: up to 7 rows take
    # one matrix-vector product each (4 rows: 17 -> 11 ms), more rows one product a slice (8 rows: 20 -> 14 ms).
    logits = np.empty((len(rows), len(w)), dtype=np.float32)
    for i in range(0, len(w), VOCAB_BLOCK):
        if len(rows) < 8:
            for row, out in zip(rows, logits[:, i : i + VOCAB_BLOCK]):
                np.matmul(w[i : i + VOCAB_BLOCK], row, out=out)
        else:
            np.matmul(rows, w[i : i + VOCAB_BLOCK].T, out=logits[:, i : i + VOCAB_BLOCK])
    return logits.reshape(*x.shape[:-1], len(w))


def is_batch(inputs):
    """[[464, 3290], [31373]] is a batch of two prompts; [464, 3290] is one prompt."""
    return len(inputs) > 0 and isinstance(inputs[0], (list, tuple, np.ndarray))


def check_request(prompts, n_tokens, n_ctx, n_vocab, slide=False):
    """Raise a ValueError saying what to change if these prompts cannot be continued by n_tokens."""
    if not is_whole(n_tokens, 1):
        raise ValueError(f"n_tokens must be a whole number of at least 1, got {n_tokens!r}")
    for prompt in prompts:
        if len(prompt) == 0:
            raise ValueError("the prompt is empty: give at least one token")
        check_ids(prompt, n_vocab)
        if not slide and len(prompt) + n_tokens > n_ctx:
            raise ValueError(
                f"the prompt ({len(prompt)} tokens) plus n_tokens ({n_tokens}) is {len(prompt) + n_tokens} tokens, "
                f"beyond the model's context of {n_ctx} (n_ctx): shorten the prompt, ask for fewer tokens, "
                f"or let the window slide (--slide)"
            )


def check_ids(ids, n_vocab):
    for i in ids:
        if not (is_whole(i, 0) and i < n_vocab):
            raise ValueError(f"token id {i!r} is not in the vocabulary [0, {n_vocab})")


def generate_stream(inputs, params, n_head, n_tokens=40, temperature=0.0, top_k=None, top_p=None, rng=None,
                    stop_at_eot=True, slide=False, repetition_penalty=1.0, no_repeat_ngram_size=0, bad_words_ids=None,
                    min_new_tokens=0, num_beams=1, length_penalty=1.0, early_stopping=False, num_return_sequences=1,
                    logprobs=None, eos_token_id=None, logit_bias=None, presence_penalty=0.0, frequency_penalty=0.0):
    """The tokens that follow `inputs`, step by step: a generator of ids, as soon as each is chosen.

    `inputs` is one prompt (a list of ids; each step yields an int) or a batch of prompts of any
    lengths (a list of lists; each step yields a list with one id per prompt, None for a prompt
    that has ended). A prompt ends after n_tokens, or after yielding the end token unless `stop_at_eot`
    is False: `eos_token_id`, or when it is None GPT-2's <|endoftext|> (50256) if the vocabulary holds it.
    `temperature` 0 is greedy; above 0, tokens are drawn (after top_k and top_p filtering) with `rng`, a
    seed or np.random.Generator: the same seed gives the same tokens.
    `slide` lets a prompt plus n_tokens go beyond n_ctx: the prompt keeps its last n_ctx tokens and,
    whenever the window is full, generation continues from the most recent n_ctx // 2 tokens.
    HuggingFace's controls, with its names and meaning, apply before temperature, top_k and top_p, each
    row seeing its whole prompt and what it generated (decoding.py): `repetition_penalty`,
    `no_repeat_ngram_size`, `bad_words_ids` (a list of lists of ids), `min_new_tokens`; before them OpenAI's
    `logit_bias` ({id: bias}), `presence_penalty` and `frequency_penalty` (on generated tokens only).
    `num_beams` above 1 is beam search (beam.py), with `length_penalty`, `early_stopping` (True, False or
    "never"): its ids come only once the search is done. `num_return_sequences` rows continue each prompt,
    one after another (a list for one prompt too): samples of one prompt, which is read once, or the best
    beams. With `logprobs` N, each id comes as (id, decoding.Logprob): its log-prob under the model's raw
    distribution, the N most likely tokens, and its log-prob as processed. All is checked before the first step.
    """
    batch = is_batch(inputs)
    prompts = [list(p) for p in inputs] if batch else [list(inputs)]
    n_ctx, n_vocab = params["wpe"].shape[0], params["wte"].shape[0]
    check_request(prompts, n_tokens, n_ctx, n_vocab, slide)
    check_sampling(temperature, top_k, top_p)
    eos = end_token(eos_token_id, n_vocab)
    ends_at = eos if stop_at_eot else None
    controls = Controls.checked(repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_new_tokens, n_vocab, eos,
                                logit_bias, presence_penalty, frequency_penalty)
    check_search(num_beams, length_penalty, early_stopping, num_return_sequences, temperature, slide)
    check_logprobs(logprobs, n_vocab)
    forward = lambda tokens, kvcache, mask: gpt2(tokens, **params, n_head=n_head, kvcache=kvcache, mask=mask, last_only=True)
    if num_beams > 1:
        steps = generation.beam_steps(prompts, forward, n_tokens, ends_at, controls, num_beams, length_penalty,
                                      early_stopping, num_return_sequences, logprobs)
    else:
        choose = chooser(controls, temperature, top_k, top_p, np.random.default_rng(rng))
        steps = generation.steps(prompts, forward, n_tokens, ends_at, n_ctx, choose, num_return_sequences, logprobs)
    return steps if batch or num_return_sequences > 1 else (ids[0] for ids in steps)


def generate(inputs, params, n_head, n_tokens=40, temperature=0.0, top_k=None, top_p=None, rng=None,
             stop_at_eot=True, slide=False, **options):
    """The ids that follow `inputs`, as a new list (inputs is left unchanged); greedy by default.

    For a batch (a list of prompts of any lengths) a list of lists, row by row the ids each prompt
    gives alone. A row that ends at <|endoftext|> includes it. Options as for generate_stream; with
    `logprobs`, (ids, their decoding.Logprob records), the two of the same shape.
    """
    batch, with_logprobs = is_batch(inputs), options.get("logprobs") is not None
    prompts = inputs if batch else [inputs]  # so that every step is a list
    n_rows = len(prompts) * options.get("num_return_sequences", 1)
    steps = generate_stream(prompts, params, n_head, n_tokens, temperature, top_k, top_p, rng, stop_at_eot, slide, **options)
    out = generation.collect(steps, n_rows, with_logprobs)
    if batch or n_rows > 1:
        return out
    return (out[0][0], out[1][0]) if with_logprobs else out[0]


def score(ids, params, n_head, stride=None, progress=None, n_top=None):  # [n] -> [n - 1]
    """Natural-log probability of each token given those before it: one float32 for each of ids[1:].
    With n_top, also the n_top most likely tokens at each of those places: (logprobs [n - 1],
    top ids [n - 1, n_top], their log-probs [n - 1, n_top]), a token's own log-prob the same float as its
    entry in the top when it is there.

    A text longer than n_ctx is read in windows of n_ctx tokens that start every `stride` tokens
    (default n_ctx // 2); each token is scored once, in the first window that ends past it, with
    the context that window gives. This is HuggingFace's sliding-window perplexity recipe.
    `progress(scored, total)`, if given, is called after each window with the tokens scored so far.
    """
    n_ctx, n_vocab = params["wpe"].shape[0], params["wte"].shape[0]
    stride = n_ctx // 2 if stride is None else stride
    if not (is_whole(stride, 1) and stride < n_ctx):
        # A window that starts past the previous one's end would leave its first token with no context.
        raise ValueError(f"stride must be a whole number from 1 to n_ctx - 1 ({n_ctx - 1}), got {stride!r}")
    if len(ids) < 2:
        raise ValueError(f"scoring needs at least 2 tokens (the first has no context), got {len(ids)}")
    check_ids(ids, n_vocab)
    if n_top is not None and not is_whole(n_top, 0):
        raise ValueError(f"n_top must be a whole number, got {n_top!r}")
    ids = np.asarray(ids)
    scored, done = [], 1  # ids[:done] are scored (the first never is)
    for begin in range(0, len(ids), stride):
        end = min(begin + n_ctx, len(ids))
        # Only the positions whose next token this window scores, ids[done:end], need their output.
        x, _ = transformer(ids[None, begin:end], params["wte"], params["wpe"], params["blocks"], n_head, n_out=end - done + 1)
        x = layer_norm(x[0, :-1], **params["ln_f"])  # [end - done, n_embd]
        scored.append(target_logprobs(x, ids[done:end], params["wte"], params.get("lm_head"), n_top=n_top))
        done = end
        if progress:
            progress(done - 1, len(ids) - 1)
        if end == len(ids):
            break
    if n_top is None:
        return np.concatenate(scored)
    return tuple(np.concatenate(part) for part in zip(*scored))


def target_logprobs(x, targets, wte, lm_head=None, rows=256, n_top=None):  # [n, n_embd], [n] -> [n]
    """log_softmax(unembed(x))[i, targets[i]] for each row, `rows` rows at a time: a [rows, n_vocab] block of
    logits at once (51 MB) rather than [n, n_vocab] (410 MB for a 2048-token window). With n_top, also the
    n_top most likely ids of each row and their log-probs: ([n], [n, n_top], [n, n_top])."""
    out = np.empty(len(x), dtype=np.float32)
    k = n_top or 0
    top_ids, top_logprobs = np.empty((len(x), k), dtype=np.int64), np.empty((len(x), k), dtype=np.float32)
    for i in range(0, len(x), rows):
        logits = unembed(x[i : i + rows], wte, lm_head)  # [rows, n_vocab], a fresh array: worked on in place
        top = logits.max(axis=-1, keepdims=True)
        logits -= top  # every log-prob below is (logit - top) - log(sum(exp(logit - top))), the same float for a token
        picked = logits[np.arange(len(logits)), targets[i : i + rows]]
        best = np.stack([top_indices(row, k) for row in logits])
        best_shifted = np.take_along_axis(logits, best, axis=-1)
        log_total = np.log(np.exp(logits, out=logits).sum(axis=-1))
        out[i : i + rows] = picked - log_total
        top_ids[i : i + rows], top_logprobs[i : i + rows] = best, best_shifted - log_total[:, None]
    return out if n_top is None else (out, top_ids, top_logprobs)


if __name__ == "__main__":
    import cli

    cli.main()
