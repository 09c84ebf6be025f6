"""Looking inside GPT-2: every intermediate array of the forward pass by its TransformerLens name, hooks that
read or replace them, the logit lens, and GLTR's token view (how likely each token of a text was).

There is no forward pass here: gpt2.gpt2(..., hook=fn) calls fn(name, array) at each hook point with the array
as the forward pass holds it, and goes on with what fn returns. This file translates between that and the
names and layouts TransformerLens documents for GPT-2, so that its tutorials carry over:

    name (L = 0 .. n_layer - 1)                     here, for one text      in the forward pass
    hook_embed, hook_pos_embed                      [pos, n_embd]           [B, n_seq, n_embd] ([1, ...] for pos)
    blocks.L.hook_resid_pre, hook_resid_mid,
      hook_resid_post, hook_attn_out, hook_mlp_out,
      ln1.hook_normalized, ln2.hook_normalized      [pos, n_embd]           [B, n_seq, n_embd]
    blocks.L.ln1.hook_scale, ln2.hook_scale         [pos, 1]                [B, n_seq, 1]
    blocks.L.attn.hook_q, hook_k, hook_v, hook_z    [pos, head, d_head]     [B, n_head, n_seq, d_head]
    blocks.L.attn.hook_attn_scores, hook_pattern    [head, q_pos, k_pos]    the same; masked scores -1e10, here -inf
    blocks.L.mlp.hook_pre, hook_post                [pos, 4*n_embd]         [B, n_seq, 4*n_embd]
    ln_final.hook_scale, ln_final.hook_normalized   [pos, 1], [pos, n_embd]

A batch (texts of one length) puts a batch axis first in every one of them, as TransformerLens does.
The page that shows a text from every side (`Inspection.html()`, `--html`) is built in lens_html.py.
"""
import difflib
import functools
from typing import NamedTuple

import numpy as np

import gpt2
from decoding import EOT, is_whole, log_softmax, logsumexp

BLOCK_HOOKS = ("hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
               "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
               "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
HEADS_SECOND = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z")  # heads before positions in the forward pass
ROWS = 128  # positions whose [ROWS, n_vocab] logits the lens and the token view hold at a time


@functools.lru_cache(maxsize=None)
def hook_names(n_layer):
    """Every hook point of an n_layer model, in the order the forward pass reaches them."""
    blocks = (f"blocks.{layer}.{name}" for layer in range(n_layer) for name in BLOCK_HOOKS)
    return ("hook_embed", "hook_pos_embed", *blocks, "ln_final.hook_scale", "ln_final.hook_normalized")


def cache_bytes(n_seq, n_layer, n_embd, n_head, batch_size=1):
    """Bytes of a full cache of float32 arrays. 124M at 1024 tokens: 1.93 GB, 1.21 GB of it scores and patterns.

    Per block and position: 11 arrays of n_embd (resid_pre, ln1, q, k, v, z, attn_out, resid_mid, ln2, mlp_out,
    resid_post), 2 of 4 * n_embd (mlp pre and post), 2 scales, and a row of n_seq per head in scores and pattern.
    """
    per_block = n_seq * (19 * n_embd + 2 + 2 * n_head * n_seq)
    return 4 * batch_size * (n_layer * per_block + n_seq * (3 * n_embd + 1))  # + embed, pos_embed, ln_final


def inspection_bytes(n_seq, params, n_head, deep=True):
    """About the bytes an Inspection of n_seq tokens holds at its peak: the logits [n_seq, n_vocab] and the
    token view's working copies of them; when `deep`, also every attention pattern (and one layer's scores
    beside them), the residual streams the logit lens reads, and the lens's own working rows."""
    n_vocab, n_embd = params["wte"].shape
    n_layer = len(params["blocks"])
    floats = 3 * n_seq * n_vocab
    if deep:
        floats += (n_layer + 2) * n_head * n_seq * n_seq + (2 * n_layer + 1) * n_seq * n_embd + 3 * ROWS * n_vocab
    return 4 * floats


def run_with_cache(inputs, params, n_head, names=None, hooks=None):
    """One forward pass -> (logits, cache): the logits [pos, n_vocab] ([batch, pos, n_vocab] for a batch), and a
    dict {name: float32 array} of the activations `names` asks for, in the layouts of the table above.

    `names`: None for every hook point, a list of names (or one name), or a function name -> bool. A full cache
    is large (cache_bytes(); the patterns alone of 124M at 1024 tokens are 604 MB), so ask for what you need.
    `hooks` as for run_with_hooks: the cache then holds the arrays the forward pass went on with.
    """
    ids, single = check_inputs(inputs, params)
    n_layer = len(params["blocks"])
    keep = selector(names, n_layer)
    attached = attach({} if hooks is None else hooks, n_layer)
    cache = {}
    hook = adapter(attached, keep, cache, 1 if single else len(ids), single)
    logits = gpt2.gpt2(ids, **params, n_head=n_head, hook=hook)
    return logits, cache


def run_with_hooks(inputs, params, n_head, hooks):
    """The logits of a forward pass in which hook functions read, and may replace, activations.

    `hooks` is {name: fn} or [(name, fn), ...]; a name may also be a function name -> bool, for every name it
    accepts, and several hooks on one name run in the order given. fn(array, name) gets its own copy of the
    activation, laid out as in the table above, and returns what the forward pass goes on with: an array of the
    same shape and dtype (float32), or None to go on with the copy as fn left it (edited in place, say):

        def zero_head_3(z, name):  # z [pos, head, d_head]
            z[:, 3] = 0
        logits = run_with_hooks(ids, params, n_head, {"blocks.0.attn.hook_z": zero_head_3})
    """
    return run_with_cache(inputs, params, n_head, names=(), hooks=hooks)[0]


def check_inputs(inputs, params):
    """-> (ids [n_seq] or [B, n_seq], whether they are one text). gpt2() checks the ids themselves."""
    try:
        ids = np.asarray(inputs)
    except ValueError:  # rows of different lengths
        ids = np.asarray(None)
    if ids.dtype == object:
        raise ValueError("inputs must be token ids: one list, or a batch of lists of one length (nothing is padded "
                         "here): cut the texts to one length, or look at them one at a time")
    n_ctx = len(params["wpe"])
    if ids.ndim in (1, 2) and ids.shape[-1] > n_ctx:
        raise ValueError(f"the text is {ids.shape[-1]} tokens, beyond the model's context of {n_ctx} (n_ctx): "
                         f"this reads one window, so shorten the text")
    return ids, ids.ndim == 1


def check_name(name, n_layer):
    """The name, if it is a hook point of an n_layer model; otherwise a ValueError listing the close ones."""
    valid = hook_names(n_layer)
    if isinstance(name, str) and name in valid:
        return name
    close = [n for n in valid if str(name) in n] or difflib.get_close_matches(str(name), valid, n=5, cutoff=0.6)
    close = close if len(close) <= 5 else [*close[:3], f"... ({len(close)} names hold {name!r})"]
    hint = f"did you mean {', '.join(close)}?" if close else f"lens.hook_names({n_layer}) lists all {len(valid)}"
    raise ValueError(f"there is no hook point {name!r} in this model (blocks 0 to {n_layer - 1}): {hint}")


def selector(names, n_layer):  # -> name -> bool
    if names is None:
        return lambda name: True
    if callable(names):
        return names
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple, set, frozenset)):
        raise ValueError(f"names must be None (all), a list of hook names or a function name -> bool, got {names!r}")
    return {check_name(name, n_layer) for name in names}.__contains__


def attach(hooks, n_layer):
    """{name: fn} or [(name or predicate, fn), ...] -> {name: [fn, ...]}, each name checked."""
    if not isinstance(hooks, (dict, list, tuple)):
        raise ValueError(f"hooks must be {{name: fn}} or [(name, fn), ...], got a {type(hooks).__name__}")
    attached = {}
    for pair in hooks.items() if isinstance(hooks, dict) else hooks:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and callable(pair[1])):
            raise ValueError(f"hooks must be {{name: fn}} or [(name, fn), ...] with fn(array, name) -> array, got {pair!r}")
        name, fn = pair
        chosen = [n for n in hook_names(n_layer) if name(n)] if callable(name) else [check_name(name, n_layer)]
        for n in chosen:
            attached.setdefault(n, []).append(fn)
    return attached


def adapter(attached, keep, cache, B, single):
    """The hook gpt2() calls: it runs the hooks attached to each name on their own copy, in TransformerLens's
    layout, and caches what keep(name) asks for. A hook never sees an array of the forward pass itself, so no
    edit in place can reach a cached array or the weights."""
    def hook(name, x):
        for fn in attached.get(name, ()):
            given = np.array(to_user(name, x, B, single))
            out = fn(given, name)
            out = given if out is None else out
            check_replacement(name, out, given)
            x = to_forward(name, out, single)
        if keep(name):
            cache[name] = np.ascontiguousarray(to_user(name, x, B, single))
        return x

    return hook


def to_user(name, x, B, single):  # the forward pass's layout -> TransformerLens's, a view where it can be
    if name.endswith(HEADS_SECOND):
        x = x.transpose(0, 2, 1, 3)  # [B, n_head, n_seq, d] -> [B, n_seq, n_head, d]
    elif name.endswith("hook_attn_scores"):
        x = np.where(x == gpt2.MASKED, -np.inf, x)  # TransformerLens's value where a query may not look
    elif name == "hook_pos_embed":
        x = np.broadcast_to(x, (B, *x.shape[1:]))  # one row of positions serves the whole batch
    return x[0] if single else x


def to_forward(name, x, single):  # TransformerLens's layout -> the forward pass's
    x = x[None] if single else x
    return x.transpose(0, 2, 1, 3) if name.endswith(HEADS_SECOND) else x


def check_replacement(name, out, given):
    if isinstance(out, np.ndarray) and out.shape == given.shape and out.dtype == given.dtype:
        return
    got = f"shape {list(out.shape)} {out.dtype}" if isinstance(out, np.ndarray) else f"a {type(out).__name__}"
    raise ValueError(f"the hook on {name} returned {got}, but {name} has shape {list(given.shape)} {given.dtype}: "
                     f"return an array of that shape and dtype (.astype(np.float32) if it became float64), "
                     f"or None to go on with the array the hook was given")


def one_text(ids, params, prepend_eot=False, least=2, eot=EOT):
    """ids as an array [n_seq], after <|endoftext|> (id `eot`) if asked; a ValueError for a batch, or too few or
    too many ids."""
    ids = np.asarray(ids) if isinstance(ids, (list, tuple, np.ndarray)) else None
    if ids is None or ids.ndim != 1 or not (len(ids) == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError("give one text as a list of token ids (look at the texts of a batch one at a time)")
    if len(ids) == 0:
        raise ValueError("the text is empty: give at least one token")
    if prepend_eot:
        ids = np.concatenate([[eot], ids])
    if len(ids) < least:
        raise ValueError("a text of one token has nothing to score (the first token has no context): give a longer "
                         "text, or put <|endoftext|> before it (prepend_eot)")
    return check_inputs(ids, params)[0]


class LogitLens(NamedTuple):
    """What each residual stream would predict if the model ended there: put through ln_final and the unembedding.
    One row per stream (`names`, in forward order), one column per position; the next token is predicted."""
    names: list             # [n_rows] hook names: blocks.0.hook_resid_pre (the embeddings), then after blocks
    top: np.ndarray         # [n_rows, n_seq] the most likely next token read from that stream
    top_prob: np.ndarray    # [n_rows, n_seq] its probability
    predicted: np.ndarray   # [n_seq] the final layer's most likely next token
    prob: np.ndarray        # [n_rows, n_seq] the probability each stream gives `predicted`
    rank: np.ndarray        # [n_rows, n_seq] its rank there: 1 is the top
    kl: np.ndarray          # [n_rows, n_seq] KL(final || stream) in nats: 0 where the stream predicts as the end does


def residual_names(n_layer, sublayers=False):
    """The streams the logit lens reads: the embeddings, then after each block (and after each attention too)."""
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(n_layer):
        names += [f"blocks.{layer}.hook_resid_mid"] * sublayers + [f"blocks.{layer}.hook_resid_post"]
    return names


def logit_lens(ids, params, n_head, sublayers=False):
    """The logit lens of one text (a list of ids), after every block and, with `sublayers`, every attention too."""
    ids = one_text(ids, params, least=1)
    names = residual_names(len(params["blocks"]), sublayers)
    logits, cache = run_with_cache(ids, params, n_head, names=names)
    return lens_of(cache, logits, params, names)


def lens_of(cache, logits, params, names):  # {name: [n_seq, n_embd]}, [n_seq, n_vocab] -> LogitLens
    n_seq = len(logits)
    predicted = logits.argmax(axis=-1)
    top, rank = (np.empty((len(names), n_seq), dtype=np.int64) for _ in range(2))
    top_prob, prob, kl = (np.empty((len(names), n_seq), dtype=np.float32) for _ in range(3))
    for i in range(0, n_seq, ROWS):
        rows = slice(i, i + ROWS)
        final = log_softmax(logits[rows])  # [ROWS, n_vocab]
        final_probs = np.exp(final)
        for r, name in enumerate(names):
            read = gpt2.unembed(gpt2.layer_norm(cache[name][rows], **params["ln_f"]), params["wte"], params.get("lm_head"))
            top[r, rows], top_prob[r, rows] = best(read)
            prob[r, rows], rank[r, rows] = probability_and_rank(read, predicted[rows])
            kl[r, rows] = np.maximum((final_probs * (final - log_softmax(read))).sum(axis=-1), 0)  # >= 0 but for rounding
    return LogitLens(names, top, top_prob, predicted, prob, rank, kl)


def best(logits, k=None):  # [n, n_vocab] -> ids and their probabilities: [n] each, or [n, k], most likely first
    ids = np.argpartition(-logits, k - 1, axis=-1)[:, :k] if k else logits.argmax(axis=-1)[:, None]
    picked = np.take_along_axis(logits, ids, axis=-1)
    order = np.argsort(-picked, axis=-1, kind="stable")
    ids, picked = np.take_along_axis(ids, order, axis=-1), np.take_along_axis(picked, order, axis=-1)
    probs = np.exp(picked - logsumexp(logits)[:, None])
    return (ids, probs) if k else (ids[:, 0], probs[:, 0])


def probability_and_rank(logits, targets):  # [n, n_vocab], [n] -> [n], [n]
    """Each target's probability, and its rank: 1 + the tokens more likely than it (a tie ranks it first)."""
    picked = logits[np.arange(len(targets)), targets]
    return np.exp(picked - logsumexp(logits)), (logits > picked[:, None]).sum(axis=-1) + 1


class TokenView(NamedTuple):
    """How likely each token of a text was, given the ones before it (GLTR: "Giant Language model Test Room")."""
    ids: np.ndarray         # [n] the tokens scored: every token of the text but the first (all, after <|endoftext|>)
    prob: np.ndarray        # [n] its probability
    rank: np.ndarray        # [n] its rank among all n_vocab tokens: 1 is the model's top choice
    top_ids: np.ndarray     # [n, k] the k most likely tokens at that place, most likely first
    top_probs: np.ndarray   # [n, k] their probabilities
    entropy: np.ndarray     # [n] of the whole distribution there, in nats: low where the model was sure


def token_view(ids, params, n_head, k=5, prepend_eot=False):
    """GLTR's view of one text (a list of ids): each token's probability and rank, the k likeliest tokens at its
    place, and the entropy there. The first token has no context and is not scored, unless `prepend_eot` puts
    <|endoftext|> before it (GPT-2 read its training texts with one between them)."""
    ids = one_text(ids, params, prepend_eot)
    return view_of(gpt2.gpt2(ids, **params, n_head=n_head)[:-1], ids[1:], k)


def view_of(logits, targets, k):  # [n, n_vocab], [n] -> TokenView
    if not (is_whole(k, 1) and k <= logits.shape[-1]):
        raise ValueError(f"k, the alternatives to show, must be a whole number from 1 to {logits.shape[-1]}, got {k!r}")
    n = len(targets)
    prob, entropy = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    rank, top_ids, top_probs = np.empty(n, dtype=np.int64), np.empty((n, k), dtype=np.int64), np.empty((n, k), dtype=np.float32)
    for i in range(0, n, ROWS):
        rows = slice(i, i + ROWS)
        prob[rows], rank[rows] = probability_and_rank(logits[rows], targets[rows])
        top_ids[rows], top_probs[rows] = best(logits[rows], k)
        logprobs = log_softmax(logits[rows])  # [ROWS, n_vocab]
        entropy[rows] = -(np.exp(logprobs) * logprobs).sum(axis=-1)
    return TokenView(np.asarray(targets), prob, rank, top_ids, top_probs, entropy)


def token_text(encoder, token_id):
    """A token as text; one that holds part of a character shows its bytes: 447 -> '\\xe2\\x80'."""
    return encoder.token_bytes(int(token_id)).decode("utf-8", errors="backslashreplace")


class Inspection:
    """One text seen from every side, all from one forward pass: the token view, the logit lens after every block
    and attention, and every attention pattern. print(it.table()); it.html() is a page; a notebook shows it.
    deep=False makes the token view alone (all table() needs), without the cost of the lens and the patterns."""

    def __init__(self, ids, params, n_head, encoder, k=5, prepend_eot=False, deep=True):
        eot = EOT if encoder.eot_token is None else encoder.eot_token  # the tokenizer's own, if it has one
        self.ids = one_text(ids, params, prepend_eot, eot=eot)  # [n_seq]; position 0 is never scored: it has no context
        self.prepend_eot = prepend_eot
        self.lens = self.patterns = None
        if not deep:  # the token view alone, all that table() prints: the plain forward pass
            logits = gpt2.gpt2(self.ids, **params, n_head=n_head)
        else:
            n_layer, n_seq = len(params["blocks"]), len(self.ids)
            names = residual_names(n_layer, sublayers=True)
            patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layer)]
            logits, cache = run_with_cache(self.ids, params, n_head, names=names + patterns)
            self.lens = lens_of(cache, logits, params, names)
            self.patterns = np.empty((n_layer, n_head, n_seq, n_seq), dtype=np.float32)
            for layer, name in enumerate(patterns):  # each layer's pattern leaves the cache once copied
                self.patterns[layer] = cache.pop(name)
        self.view = view_of(logits[:-1], self.ids[1:], k)
        self.encoder = encoder
        self.tokens = [self.token_text(i) for i in self.ids]
        self.text = encoder.decode(self.ids[int(prepend_eot):])

    def token_text(self, token_id):
        return token_text(self.encoder, token_id)

    def table(self):
        """The token view as a text table: one line per token, with the likeliest tokens at its place."""
        k = self.view.top_ids.shape[1]
        lines = [f"{'pos':>5}  {'token':<20} {'prob':>9} {'rank':>7} {'entropy':>8}  likeliest {k} here"]
        for pos, token in enumerate(self.tokens):
            if pos == 0:
                note = "(context: <|endoftext|> before the text)" if self.prepend_eot else "(no context: not scored)"
                lines.append(f"{pos:>5}  {token!r:<20} {'':>9} {'':>7} {'':>8}  {note}")
                continue
            i = pos - 1
            alternatives = "  ".join(f"{self.token_text(t)!r} {p:.3f}" for t, p in zip(self.view.top_ids[i], self.view.top_probs[i]))
            lines.append(f"{pos:>5}  {token!r:<20} {self.view.prob[i]:>9.3g} {self.view.rank[i]:>7} "
                         f"{self.view.entropy[i]:>8.3f}  {alternatives}")
        return "\n".join(lines)

    def html(self):
        if self.lens is None:
            raise ValueError("this Inspection was made with deep=False: it has no logit lens or attention patterns "
                             "for a page; make it with deep=True")
        import lens_html

        return lens_html.page(self)

    def _repr_html_(self):  # a notebook shows the page inline, in a frame of its own
        import lens_html

        return lens_html.inline(self.html())
