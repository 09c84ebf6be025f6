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

from decoding import check_sampling, log_softmax, sample

EOT = 50256  # <|endoftext|>, GPT-2's one special token: it ends a text
# The tanh approximation of GELU that GPT-2 was trained with. A float32 constant on purpose:
# np.sqrt(2 / np.pi) is a float64 scalar, and under NumPy 2 it would turn every activation float64.
GELU_C = np.float32(math.sqrt(2 / math.pi))
# The score of a key a query may not see. Finite, so that a query whose keys are all padding
# gets a harmless uniform average instead of NaN; in any other row exp() makes it exactly 0.
MASKED = np.float32(-1e10)


def gelu(x):  # [...] -> [...]
    # x * x * x, not x**3: NumPy's float32 power is a slow general pow, about 100x slower here.
    return 0.5 * x * (1 + np.tanh(GELU_C * (x + 0.044715 * x * x * x)))


def layer_norm(x, g, b, eps=1e-5):  # [..., n_embd] -> [..., n_embd]
    x = x - x.mean(axis=-1, keepdims=True)
    variance = (x * x).mean(axis=-1, keepdims=True)
    return g * x / np.sqrt(variance + eps) + b


def linear(x, w, b):  # [..., nx] @ [nx, nf] + [nf] -> [..., nf]
    # As one 2D product: NumPy would run [B, n_seq, nx] @ w as B products, each reading all of w.
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1]) + b


def ffn(x, c_fc, c_proj):  # [B, n_seq, n_embd] -> [B, n_seq, n_embd]
    return linear(gelu(linear(x, **c_fc)), **c_proj)


def attention(q, k, v, mask):  # [B, n_head, n_q, d], [B, n_head, n_k, d] x2, [B, 1, n_q, n_k] -> [B, n_head, n_q, d]
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.swapaxes(-1, -2)  # [B, n_head, n_q, n_k]
    np.copyto(scores, MASKED, where=~mask)
    scores -= np.max(scores, axis=-1, keepdims=True)
    weights = np.exp(scores, out=scores)  # softmax's numerator, in place: scores is a fresh array
    # softmax(scores) @ v, dividing the smaller [n_q, d] result rather than the [n_q, n_k] weights
    return (weights @ v) / np.sum(weights, axis=-1, keepdims=True)


def causal_attention(q, k, v, mask, block=128):  # [B, n_head, n_seq, d], [B, n_head, n_all, d] x2, [B, 1, n_seq, n_all] -> [B, n_head, n_seq, d]
    """attention() for a block of queries at a time: each block reads only the keys up to its own last
    position, which skips the masked-out upper triangle of a long prompt and keeps the scores in cache."""
    n_seq, n_all = q.shape[-2], k.shape[-2]
    out = np.empty_like(q)
    for start in range(0, n_seq, block):
        stop = min(start + block, n_seq)
        end = n_all - n_seq + stop  # one past the last position this block's queries may see
        out[..., start:stop, :] = attention(q[..., start:stop, :], k[..., :end, :], v[..., :end, :], mask[..., start:stop, :end])
    return out


def mha(x, c_attn, c_proj, n_head, mask, past=None):  # [B, n_seq, n_embd] -> [B, n_seq, n_embd], present
    B, n_seq, n_embd = x.shape
    qkv = linear(x, **c_attn)  # [B, n_seq, 3*n_embd]
    # All heads at once: [B, n_seq, 3*n_embd] -> [3, B, n_head, n_seq, n_embd/n_head]
    q, k, v = qkv.reshape(B, n_seq, 3, n_head, n_embd // n_head).transpose(2, 0, 3, 1, 4)
    if past is not None:  # concatenate copies: the caller's cache is left as it was
        k = np.concatenate([past[0], k], axis=2)  # [B, n_head, n_past + n_seq, n_embd/n_head]
        v = np.concatenate([past[1], v], axis=2)
    out = causal_attention(q, k, v, mask)  # [B, n_head, n_seq, n_embd/n_head]
    out = out.transpose(0, 2, 1, 3).reshape(B, n_seq, n_embd)  # merge heads
    return linear(out, **c_proj), (k, v)


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head, mask, past=None):  # [B, n_seq, n_embd] -> same, present
    a, present = mha(layer_norm(x, **ln_1), **attn, n_head=n_head, mask=mask, past=past)
    x = x + a
    x = x + ffn(layer_norm(x, **ln_2), **mlp)
    return x, present


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head, lm_head=None, kvcache=None, mask=None, last_only=False):
    """Logits for the token ids `inputs`: [n_seq] -> [n_seq, n_vocab], or [B, n_seq] -> [B, n_seq, n_vocab].

    Without `kvcache` this is picoGPT's function and returns the logits alone. With one, `inputs`
    are the tokens that follow those in the cache, and the call returns `(logits, kvcache)`, a new
    cache with them added (the one passed in is not changed); start with `kvcache=[]`.
    Cache layout: one `(k, v)` pair per block, each [B, n_head, n_past, n_embd/n_head] float32.
    `mask` ([B, n_past + n_seq] bool, False at padding) lets rows of different lengths share a
    batch: padding is never attended to, and positions count real tokens only, so each row's
    first real token is at position 0 however much padding precedes it.
    `last_only` computes the logits of the last position alone ([..., 1, n_vocab]), all decoding needs.
    `lm_head` ([n_vocab, n_embd]) is the unembedding of a fine-tune that untied it from wte; GPT-2's own is wte.
    """
    try:
        inputs = np.asarray(inputs)
    except ValueError:  # ragged lists
        inputs = np.asarray(None)
    single = inputs.ndim == 1
    inputs = inputs[None] if single else inputs  # [B, n_seq]
    if inputs.ndim != 2 or inputs.shape[1] == 0 or not np.issubdtype(inputs.dtype, np.integer):
        raise ValueError("inputs must be a non-empty list of token ids, or B such lists of equal length (pad with a mask)")
    if inputs.min() < 0 or inputs.max() >= len(wte):  # a negative id would silently index from the end
        raise ValueError(f"token ids must be in [0, {len(wte)}), got {inputs.min()} to {inputs.max()}")
    B, n_seq = inputs.shape
    cached, kvcache = kvcache is not None, kvcache or [None] * len(blocks)
    n_past = 0 if kvcache[0] is None else kvcache[0][0].shape[2]
    n_all = n_past + n_seq
    if n_all > len(wpe):
        raise ValueError(f"{n_past} cached + {n_seq} new tokens exceed the context of {len(wpe)} (n_ctx)")
    mask = np.ones((B, n_all), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != (B, n_all):
        raise ValueError(f"mask must have shape [B, n_past + n_seq] = {[B, n_all]}, got {list(mask.shape)}")

    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, n_past:]  # [B, n_seq]
    causal = np.tril(np.ones((n_seq, n_all), dtype=bool), k=n_past)  # query i sits at column n_past + i
    attn_mask = causal & mask[:, None, None, :]  # [B, 1, n_seq, n_all]
    x = wte[inputs] + wpe[positions]  # [B, n_seq, n_embd]
    presents = []
    for block, past in zip(blocks, kvcache):
        x, present = transformer_block(x, **block, n_head=n_head, mask=attn_mask, past=past)
        presents.append(present)
    x = layer_norm(x[:, -1:] if last_only else x, **ln_f)
    unembedding = wte if lm_head is None else lm_head  # tied to wte, as in GPT-2
    logits = linear(x, unembedding.T, 0)  # [B, n_seq, n_embd] -> [B, n_seq, n_vocab]
    logits = logits[0] if single else logits
    return (logits, presents) if cached else logits


def is_batch(inputs):
    """[[464, 3290], [31373]] is a batch of two prompts; [464, 3290] is one prompt."""
    return len(inputs) > 0 and isinstance(inputs[0], (list, tuple, np.ndarray))


def check_request(prompts, n_tokens, n_ctx, n_vocab, slide=False):
    """Raise a ValueError saying what to change if these prompts cannot be continued by n_tokens."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or n_tokens < 1:
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
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n_vocab:
            raise ValueError(f"token id {i!r} is not in the vocabulary [0, {n_vocab})")


def generate_stream(inputs, params, n_head, n_tokens=40, temperature=0.0, top_k=None, top_p=None, rng=None,
                    stop_at_eot=True, slide=False):
    """The tokens that follow `inputs`, step by step: a generator of ids, as soon as each is chosen.

    `inputs` is one prompt (a list of ids; each step yields an int) or a batch of prompts of any
    lengths (a list of lists; each step yields a list with one id per prompt, None for a prompt
    that has ended). A prompt ends after n_tokens, or after yielding <|endoftext|> unless
    `stop_at_eot` is False. `temperature` 0 is greedy; above 0, tokens are drawn (after top_k and
    top_p filtering) with `rng`, a seed or np.random.Generator: the same seed gives the same tokens.
    `slide` lets a prompt plus n_tokens go beyond n_ctx: the prompt keeps its last n_ctx tokens and,
    whenever the window is full, generation continues from the most recent n_ctx // 2 tokens.
    The arguments are checked here, before the first step.
    """
    batch = is_batch(inputs)
    prompts = [list(p) for p in inputs] if batch else [list(inputs)]
    n_ctx, n_vocab = params["wpe"].shape[0], params["wte"].shape[0]
    check_request(prompts, n_tokens, n_ctx, n_vocab, slide)
    check_sampling(temperature, top_k, top_p)
    rng = np.random.default_rng(rng)
    steps = _steps(prompts, params, n_head, n_tokens, stop_at_eot, n_ctx,
                   lambda logits: sample(logits, temperature, top_k, top_p, rng))
    return steps if batch else (ids[0] for ids in steps)


def _steps(prompts, params, n_head, n_tokens, stop_at_eot, n_ctx, choose):
    # Left padding makes one rectangle; the mask marks the real tokens.
    width = max(map(len, prompts))
    tokens = np.array([[EOT] * (width - len(p)) + p for p in prompts])[:, -n_ctx:]  # [B, <= n_ctx]
    mask = np.array([[False] * (width - len(p)) + [True] * len(p) for p in prompts])[:, -n_ctx:]
    logits, kvcache = gpt2(tokens, **params, n_head=n_head, kvcache=[], mask=mask, last_only=True)
    ended = np.zeros(len(prompts), dtype=bool)
    for step in range(n_tokens):
        next_ids = np.array([choose(row) for row in logits[:, -1]])  # [B]
        yield [None if e else int(i) for e, i in zip(ended, next_ids)]
        ended |= (next_ids == EOT) & stop_at_eot
        if ended.all() or step == n_tokens - 1:
            return
        tokens = np.concatenate([tokens, next_ids[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=bool)], axis=1)
        if mask.shape[1] <= n_ctx:  # the usual step: one new position per row, through the cache
            logits, kvcache = gpt2(tokens[:, -1:], **params, n_head=n_head, kvcache=kvcache, mask=mask, last_only=True)
        else:  # only with slide: drop the older half of the window and re-read the rest
            tokens, mask = tokens[:, -(n_ctx // 2):], mask[:, -(n_ctx // 2):]
            logits, kvcache = gpt2(tokens, **params, n_head=n_head, kvcache=[], mask=mask, last_only=True)


def generate(inputs, params, n_head, n_tokens=40, temperature=0.0, top_k=None, top_p=None, rng=None,
             stop_at_eot=True, slide=False):
    """The ids that follow `inputs`, as a new list (inputs is left unchanged); greedy by default.

    For a batch (a list of prompts of any lengths) a list of lists, row by row the ids each prompt
    gives alone. A row that ends at <|endoftext|> includes it. Options as for generate_stream.
    """
    steps = generate_stream(inputs, params, n_head, n_tokens, temperature, top_k, top_p, rng, stop_at_eot, slide)
    if not is_batch(inputs):
        return list(steps)
    rows = [[] for _ in inputs]
    for next_ids in steps:
        for row, i in zip(rows, next_ids):
            if i is not None:
                row.append(i)
    return rows


def score(ids, params, n_head, stride=None, progress=None):  # [n] -> [n - 1]
    """Natural-log probability of each token given those before it: one float32 for each of ids[1:].

    A text longer than n_ctx is read in windows of n_ctx tokens that start every `stride` tokens
    (default n_ctx // 2); each token is scored once, in the first window that ends past it, with
    the context that window gives. This is HuggingFace's sliding-window perplexity recipe.
    """
    n_ctx, n_vocab = params["wpe"].shape[0], params["wte"].shape[0]
    stride = n_ctx // 2 if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride < n_ctx:
        # A window that starts past the previous one's end would leave its first token with no context.
        raise ValueError(f"stride must be a whole number from 1 to n_ctx - 1 ({n_ctx - 1}), got {stride!r}")
    if len(ids) < 2:
        raise ValueError(f"scoring needs at least 2 tokens (the first has no context), got {len(ids)}")
    check_ids(ids, n_vocab)
    ids = np.asarray(ids)
    scored, done = [], 1  # ids[:done] are scored (the first never is)
    for begin in range(0, len(ids), stride):
        end = min(begin + n_ctx, len(ids))
        logprobs = log_softmax(gpt2(ids[begin:end], **params, n_head=n_head)[:-1])  # [end - begin - 1, n_vocab]
        targets = ids[begin + 1 : end]
        window = logprobs[np.arange(len(targets)), targets]  # scores ids[begin + 1 : end]
        scored.append(window[done - (begin + 1) :])
        done = end
        if progress is not None: progress(done - 1, len(ids) - 1)  # tokens scored so far, of all
        if end == len(ids):
            break
    return np.concatenate(scored)


if __name__ == "__main__":
    import cli

    cli.main()
