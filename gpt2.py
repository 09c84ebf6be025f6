"""GPT-2 inference in pure NumPy: the forward pass, decoding (greedy or sampled, batched, streamed),
scoring, and a CLI.

The model is OpenAI's GPT-2 (openai/gpt-2, src/model.py), written as plain functions in the way of
picoGPT: every function's parameters are named after the checkpoint's keys, so a block is called as
`transformer_block(x, **block, n_head=n_head, mask=mask)`. Everything is float32, as the weights are.
Sampling follows nanoGPT's chain: divide by temperature, keep the top k, keep the top p, draw.

    python gpt2.py "Alan Turing theorized" --n_tokens 40
"""
import argparse
import math
import sys

import numpy as np

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


def softmax(x):  # [..., n] -> [..., n]
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def log_softmax(x):  # [..., n] -> [..., n]
    x = x - np.max(x, axis=-1, keepdims=True)
    return x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))


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


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head, kvcache=None, mask=None, last_only=False):
    """Logits for the token ids `inputs`: [n_seq] -> [n_seq, n_vocab], or [B, n_seq] -> [B, n_seq, n_vocab].

    Without `kvcache` this is picoGPT's function and returns the logits alone. With one, `inputs`
    are the tokens that follow those in the cache, and the call returns `(logits, kvcache)`, a new
    cache with them added (the one passed in is not changed); start with `kvcache=[]`.
    Cache layout: one `(k, v)` pair per block, each [B, n_head, n_past, n_embd/n_head] float32.
    `mask` ([B, n_past + n_seq] bool, False at padding) lets rows of different lengths share a
    batch: padding is never attended to, and positions count real tokens only, so each row's
    first real token is at position 0 however much padding precedes it.
    `last_only` computes the logits of the last position alone ([..., 1, n_vocab]), all decoding needs.
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
    logits = linear(x, wte.T, 0)  # unembedding tied to wte: [B, n_seq, n_embd] -> [B, n_seq, n_vocab]
    logits = logits[0] if single else logits
    return (logits, presents) if cached else logits


def top_k_filter(logits, top_k):  # [n_vocab] -> [n_vocab]
    """Logits below the k-th largest become -inf (ties with it stay). [1, 3, 2], k=2 -> [-inf, 3, 2]."""
    kth = np.partition(logits, -top_k)[-top_k]
    return np.where(logits < kth, -np.inf, logits).astype(logits.dtype)


def top_p_filter(probs, top_p):  # [n_vocab] -> [n_vocab]
    """Zero every token outside the smallest most-likely set whose mass reaches top_p (one stays).

    [0.5, 0.3, 0.2], p=0.6 -> [0.5, 0.3, 0]: 0.5 alone is short of 0.6, 0.5 + 0.3 reaches it.
    """
    order = np.argsort(-probs, kind="stable")
    mass_before = np.cumsum(probs[order]) - probs[order]
    out = np.zeros_like(probs)
    keep = order[mass_before < top_p]
    out[keep] = probs[keep]
    return out


def sample(logits, temperature=0.0, top_k=None, top_p=None, rng=None):  # [n_vocab] -> token id
    """Greedy when temperature is 0; otherwise a draw, with `rng` (a np.random.Generator), from the
    tempered, top-k and top-p filtered softmax."""
    if temperature == 0:
        return int(np.argmax(logits))
    logits = logits / np.float32(temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    probs = softmax(logits)
    if top_p is not None and top_p < 1:
        probs = top_p_filter(probs, top_p)
    cdf = np.cumsum(probs)  # unnormalised: the draw below scales to its total
    return int(min(np.searchsorted(cdf, rng.random(dtype=np.float32) * cdf[-1], side="right"), len(cdf) - 1))


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


def check_sampling(temperature, top_k, top_p):
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be a whole number of at least 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")


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


class TextStream:
    """Ids in, printable text out, for one sequence: only whole UTF-8 characters, <|endoftext|>
    never shown when it ends the text, and text that ends just before the first stop string.

    Text that could still be the start of a stop string is held back until it cannot be.
    """

    def __init__(self, encoder, stop=(), stop_at_eot=True):
        self.decoder, self.stop, self.stop_at_eot = encoder.incremental_decoder(), [s for s in stop if s], stop_at_eot
        self.held, self.done = "", False

    def add(self, token_id):
        if self.done:
            return ""
        if token_id == EOT and self.stop_at_eot:
            return self.flush()
        self.held += self.decoder.decode(token_id)
        return self._release(final=False)

    def flush(self):
        if self.done:
            return ""
        self.held += self.decoder.flush()
        out = self._release(final=True)
        self.done = True
        return out

    def _release(self, final):
        starts = [i for i in (self.held.find(s) for s in self.stop) if i >= 0]
        if starts:
            out, self.held, self.done = self.held[: min(starts)], "", True
            return out
        hold = 0 if final else max(
            (n for s in self.stop for n in range(1, len(s)) if self.held.endswith(s[:n])), default=0
        )
        out, self.held = self.held[: len(self.held) - hold], self.held[len(self.held) - hold :]
        return out


def stream_text(ids, params, n_head, encoder, n_tokens=40, stop=(), stop_at_eot=True, **options):
    """The continuation of one prompt as text pieces, yielded as they are produced (UTF-8 safe).

    It ends at <|endoftext|> (unless stop_at_eot is False) or just before the first of the `stop`
    strings, matched on the decoded text across token boundaries. Other options as for generate.
    """
    text = TextStream(encoder, stop, stop_at_eot)
    for token_id in generate_stream(ids, params, n_head, n_tokens, stop_at_eot=stop_at_eot, **options):
        piece = text.add(token_id)
        if piece:
            yield piece
        if text.done:
            return
    piece = text.flush()
    if piece:
        yield piece


def decode_text(ids, encoder, stop=(), stop_at_eot=True):
    """What stream_text would have printed for these ids, in one string."""
    text = TextStream(encoder, stop, stop_at_eot)
    return "".join(text.add(i) for i in ids) + text.flush()


def score(ids, params, n_head, stride=None):  # [n] -> [n - 1]
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
        if end == len(ids):
            break
    return np.concatenate(scored)


def positive_int(text):
    """argparse type: a whole number >= 1, or a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def parse_args(argv, model_sizes):
    parser = argparse.ArgumentParser(
        description="Continue (or score) text with OpenAI's GPT-2, in pure NumPy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("prompt", nargs="?", help="the text to continue (or score); see also --prompts_file, --interactive")
    parser.add_argument("--n_tokens", type=positive_int, default=40, help="how many tokens to generate")
    parser.add_argument("--model_size", default="124M", choices=model_sizes, help="which GPT-2")
    parser.add_argument("--models_dir", default="models", help="where checkpoints live (downloaded if missing)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, default=0.0, help="0 is greedy; higher is more random")
    sampling.add_argument("--top_k", type=positive_int, default=None, help="draw only from the k most likely tokens")
    sampling.add_argument("--top_p", type=float, default=None, help="draw only from the most likely tokens holding this much probability")
    sampling.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")
    stopping = parser.add_argument_group("stopping and long prompts")
    stopping.add_argument("--stop", action="append", default=[], help="end the text before this string (repeatable)")
    stopping.add_argument("--ignore_eot", action="store_true", help="go on past <|endoftext|>")
    stopping.add_argument("--allow_special", action="store_true", help="read <|endoftext|> in the prompt as the special token, not as text")
    stopping.add_argument("--slide", action="store_true", help="beyond n_ctx, slide the window to the most recent tokens instead of stopping with an error")
    modes = parser.add_argument_group("modes")
    modes.add_argument("--n_samples", type=positive_int, default=1, help="continue the prompt (each prompt of --prompts_file) this many times, in one batch")
    modes.add_argument("--prompts_file", help="continue every non-empty line of this file, in one batch")
    modes.add_argument("--interactive", action="store_true", help="load once, then continue each line read from stdin until EOF")
    modes.add_argument("--score", action="store_true", help="print the prompt's total log-probability and perplexity instead")
    modes.add_argument("--per_token", action="store_true", help="with --score, also print a table of every token's log-probability")
    modes.add_argument("--stride", type=positive_int, default=None, help="with --score, the sliding window's step for texts beyond n_ctx; None means n_ctx // 2")
    modes.add_argument("--verify", action="store_true", help="first check every tensor against its crc32c; alone, only that")
    args = parser.parse_args(argv)
    if args.prompt is not None and args.prompts_file is not None:
        parser.error("give a prompt or --prompts_file, not both")
    if args.prompt is None and args.prompts_file is None and not args.interactive and not args.verify:
        parser.error("give a prompt, or --prompts_file, or --interactive (or --verify alone)")
    return args


def print_score(ids, params, n_head, encoder, stride, per_token):
    logprobs = score(ids, params, n_head, stride)
    if per_token:
        print(f"{'position':>8}  {'id':>6}  {'log-prob':>9}  token")
        for position, (token_id, logprob) in enumerate(zip(ids[1:], logprobs), start=1):
            print(f"{position:>8}  {token_id:>6}  {logprob:>9.4f}  {encoder.decode([token_id])!r}")
    total = float(np.sum(logprobs))
    print(f"tokens scored: {len(logprobs)}  total log-prob: {total:.4f} nats  perplexity: {math.exp(-total / len(logprobs)):.4f}")


def main(argv=None):
    import utils  # imported here so that `import gpt2` stays light

    args = parse_args(argv, utils.MODEL_SIZES)
    options = dict(n_tokens=args.n_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   rng=args.seed, stop_at_eot=not args.ignore_eot, slide=args.slide)
    try:
        encoder, hparams, params = utils.load_encoder_hparams_and_params(args.model_size, args.models_dir)
        if args.verify:  # the shapes were checked as the model loaded; this reads every byte
            model_dir = f"{args.models_dir}/{args.model_size}"
            checked = utils.verify_checkpoint(utils.checkpoint_prefix(model_dir))
            print(f"{model_dir}: {checked:,} bytes of tensors match their crc32c", file=sys.stderr)
            if args.prompt is None and args.prompts_file is None and not args.interactive:
                return
        n_head = hparams["n_head"]
        encode = lambda text: encoder.encode(text, allowed_special="all" if args.allow_special else ())
        if args.interactive:
            interactive(encode, params, n_head, encoder, args.stop, options)
        elif args.score:
            prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts_file)
            for prompt in prompts:
                print_score(encode(prompt), params, n_head, encoder, args.stride, args.per_token)
        elif args.prompts_file or args.n_samples > 1:
            prompts = read_prompts(args.prompts_file) if args.prompts_file else [args.prompt]
            prompts = [p for p in prompts for _ in range(args.n_samples)]
            rows = generate([encode(p) for p in prompts], params, n_head, **options)
            for i, (prompt, row) in enumerate(zip(prompts, rows), start=1):
                print(f"=== {i}/{len(rows)}: {prompt}")
                print(decode_text(row, encoder, args.stop, options["stop_at_eot"]))
        else:
            print_stream(encode(args.prompt), params, n_head, encoder, args.stop, options)
    except (ValueError, OSError) as e:
        sys.exit(f"gpt2.py: error: {e}")
    except KeyboardInterrupt as e:
        sys.exit(f"\ngpt2.py: {str(e) or 'interrupted'}")


def print_stream(ids, params, n_head, encoder, stop, options):
    """Print the continuation of ids as it is produced, then a newline."""
    for piece in stream_text(ids, params, n_head, encoder, stop=stop, **options):
        print(piece, end="", flush=True)
    print()


def read_prompts(path):
    """The non-empty lines of a text file, or a ValueError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read prompts from {path}: {e}") from None
    if not prompts:
        raise ValueError(f"{path} has no prompts: write one per line")
    return prompts


def interactive(encode, params, n_head, encoder, stop, options):
    """Continue each line read from stdin until EOF; a bad prompt gets its error and the loop goes on."""
    show_prompt = sys.stdin.isatty()
    while True:
        if show_prompt:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if not line.strip():
            continue
        try:
            print_stream(encode(line.rstrip("\n")), params, n_head, encoder, stop, options)
        except ValueError as e:
            print(f"gpt2.py: error: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
