"""Choosing the next token from the model's logits: the generation controls (HuggingFace's logits processors),
then greedy, or a draw after temperature, top-k and top-p; and the log-probabilities of what was chosen.

Every function here knows only ids and logits, never the model, so each can be tested on fixed inputs. The
controls take `ids`, all the row's tokens so far (its whole prompt, then what was generated), and apply in
HuggingFace's order (transformers' `_get_logits_processor`): repetition_penalty, no_repeat_ngram_size,
bad_words_ids, min_new_tokens; sampling then follows nanoGPT's chain: divide by temperature, keep the top k,
keep the top p, draw. Beam search's bookkeeping is in beam.py.
"""
import math
from typing import NamedTuple

import numpy as np

EOT = 50256  # <|endoftext|>, GPT-2's one special token: it ends a text


def softmax(x):  # [..., n] -> [..., n]
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def log_softmax(x):  # [..., n] -> [..., n]
    return x - logsumexp(x)[..., None]


def logsumexp(x):  # [..., n] -> [...]
    """log(sum(exp(x))) along the last axis, without overflow: the log of softmax's denominator."""
    top = x.max(axis=-1, keepdims=True)
    return (np.log(np.exp(x - top).sum(axis=-1, keepdims=True)) + top)[..., 0]


# ---- The controls: (ids [n], logits [n_vocab]) -> new logits [n_vocab]; the logits passed in are not changed.

def penalize_repetition(ids, logits, penalty):  # [n], [n_vocab] -> [n_vocab]
    """Every token in ids, once however often it occurs: a logit below 0 times the penalty, any other divided by it.

    ids [7, 7], logits [1, 1, ..., 1, 2 at 7, 1, ...], penalty 2 -> the same with 1 at 7 (HF's
    RepetitionPenaltyLogitsProcessor; a penalty below 1 rewards repeating instead).
    """
    seen = np.unique(ids)
    picked = logits[seen]
    out = logits.copy()
    out[seen] = np.where(picked < 0, picked * np.float32(penalty), picked / np.float32(penalty))
    return out


def ban_repeated_ngrams(ids, logits, n):  # [n_ids], [n_vocab] -> [n_vocab]
    """-inf for every token that would complete an n-gram already in ids (HF's NoRepeatNGramLogitsProcessor).

    ids [1, 2, 3, 1, 2], n=3 -> token 3 banned: (1, 2, 3) is there, and ids end in (1, 2).
    """
    if len(ids) < n:
        return logits
    ids = np.asarray(ids)
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)  # [n_ids - n + 1, n], every n-gram
    ending = ids[len(ids) - (n - 1) :]  # the n - 1 tokens a next token would complete into an n-gram
    out = logits.copy()
    out[windows[(windows[:, :-1] == ending).all(axis=1), -1]] = -np.inf
    return out


def ban_bad_words(ids, logits, bad_words_ids):  # [n], [n_vocab] -> [n_vocab]
    """-inf for the last token of every bad word whose other tokens ids end with (HF's NoBadWordsLogitsProcessor).

    bad_words_ids [[464], [1, 2]]: 464 is always banned, 2 only right after a 1.
    """
    out = logits.copy()
    for word in bad_words_ids:
        if len(word) == 1 or (len(word) - 1 <= len(ids) and list(ids[len(ids) - len(word) + 1 :]) == list(word[:-1])):
            out[word[-1]] = -np.inf
    return out


def end_token(eos_token_id, n_vocab):
    """The id that ends a text: eos_token_id (HF's name), or when it is None GPT-2's <|endoftext|> if the
    vocabulary holds it; None when there is none. A ValueError for an id outside the vocabulary."""
    if eos_token_id is None:
        return EOT if EOT < n_vocab else None
    if not (is_whole(eos_token_id, 0) and eos_token_id < n_vocab):
        raise ValueError(f"eos_token_id must be a token id in [0, {n_vocab}), the one that ends a text "
                         f"(None: GPT-2's <|endoftext|>, 50256), got {eos_token_id!r}")
    return int(eos_token_id)


def ban_eot(logits, eos=EOT):  # [n_vocab] -> [n_vocab]
    """-inf for the end token: what min_new_tokens does until that many are generated (HF's
    MinNewTokensLengthLogitsProcessor)."""
    out = logits.copy()
    out[eos] = -np.inf
    return out


def bias_logits(logits, logit_bias):  # [n_vocab] -> [n_vocab]
    """OpenAI's logit_bias: each (id, bias) pair adds bias to that token's logit. ((464, -100),) all but bans 464."""
    out = logits.copy()
    for i, bias in logit_bias:
        out[i] += np.float32(bias)
    return out


def penalize_presence(generated, logits, presence_penalty, frequency_penalty):  # [n], [n_vocab] -> [n_vocab]
    """OpenAI's penalties: each token's logit minus frequency_penalty times how often it was generated, and minus
    presence_penalty once if it was generated at all. Only generated tokens count, as in vLLM, not the prompt's.

    generated [7, 7], presence 0.5, frequency 1 -> logit 7 lowered by 0.5 + 2 * 1 = 2.5
    """
    seen, counts = np.unique(np.asarray(generated, dtype=np.int64), return_counts=True)
    out = logits.copy()
    out[seen] -= np.float32(frequency_penalty) * counts.astype(np.float32) + np.float32(presence_penalty)
    return out


class Controls(NamedTuple):
    """The generation controls, with HuggingFace's names and defaults (each default changes nothing); and OpenAI's
    logit_bias, presence_penalty and frequency_penalty, which the server takes."""
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple = ()
    min_new_tokens: int = 0
    eos_token_id: int = EOT  # the token min_new_tokens keeps away
    logit_bias: tuple = ()  # ((id, bias), ...)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __call__(self, ids, n_new, logits):  # [n], [n_vocab] -> [n_vocab]
        """The logits with every control applied: OpenAI's first (logit_bias, then the penalties on what was
        generated, as vLLM orders them), then HF's in its order; `n_new` tokens of ids were generated."""
        if self.logit_bias:
            logits = bias_logits(logits, self.logit_bias)
        if (self.presence_penalty or self.frequency_penalty) and n_new:
            logits = penalize_presence(ids[len(ids) - n_new :], logits, self.presence_penalty, self.frequency_penalty)
        if self.repetition_penalty != 1:
            logits = penalize_repetition(ids, logits, self.repetition_penalty)
        if self.no_repeat_ngram_size:
            logits = ban_repeated_ngrams(ids, logits, self.no_repeat_ngram_size)
        if self.bad_words_ids:
            logits = ban_bad_words(ids, logits, self.bad_words_ids)
        if n_new < self.min_new_tokens:
            logits = ban_eot(logits, self.eos_token_id)
        return logits

    @classmethod
    def checked(cls, repetition_penalty=1.0, no_repeat_ngram_size=0, bad_words_ids=None, min_new_tokens=0,
                n_vocab=EOT + 1, eos_token_id=EOT, logit_bias=None, presence_penalty=0.0, frequency_penalty=0.0):
        """Controls from HF-named options (and OpenAI's three), or a ValueError saying what is wrong with one and what
        to give instead. eos_token_id is the model's end token (decoding.end_token), None if it has none."""
        for name, value in [("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)]:
            if not (is_number(value) and -2 <= value <= 2):
                raise ValueError(f"{name} must be a number from -2 to 2 (0 turns it off), as OpenAI allows; got {value!r}")
        bias = {} if logit_bias is None else logit_bias
        if not isinstance(bias, dict) or not all(is_whole(i, 0) and i < n_vocab and is_number(b) and -100 <= b <= 100
                                                 for i, b in bias.items()):
            raise ValueError(f"logit_bias must map token ids in [0, {n_vocab}) to numbers from -100 to 100, "
                             f"such as {{464: -100}}; got {logit_bias!r}")
        if not (is_number(repetition_penalty) and 0 < repetition_penalty < math.inf):
            raise ValueError(f"repetition_penalty must be a number above 0 (1 changes nothing; HF suggests 1.2), "
                             f"got {repetition_penalty!r}")
        for name, value in [("no_repeat_ngram_size", no_repeat_ngram_size), ("min_new_tokens", min_new_tokens)]:
            if not is_whole(value, 0):
                raise ValueError(f"{name} must be a whole number (0 turns it off), got {value!r}")
        words, sequence = [], (list, tuple, np.ndarray)
        for word in bad_words_ids if isinstance(bad_words_ids, sequence) else [bad_words_ids] * (bad_words_ids is not None):
            if not isinstance(word, sequence) or len(word) == 0 or not all(is_whole(i, 0) and i < n_vocab for i in word):
                raise ValueError(f"bad_words_ids must be a list of non-empty lists of token ids in [0, {n_vocab}), "
                                 f"such as [[464], [1, 2]]: {word!r} is not such a list")
            if list(word) == [eos_token_id]:
                raise ValueError(f"bad_words_ids holds [{eos_token_id}], the end token alone, which HuggingFace ignores: "
                                 "to keep it from being chosen, give min_new_tokens (as many as n_tokens) instead")
            words.append(tuple(int(i) for i in word))
        if min_new_tokens and eos_token_id is None:
            raise ValueError(f"min_new_tokens keeps the end token away, but this model has none: its vocabulary of "
                             f"{n_vocab} has no <|endoftext|> at {EOT}; give eos_token_id, or leave min_new_tokens out")
        return cls(float(repetition_penalty), int(no_repeat_ngram_size), tuple(words), int(min_new_tokens),
                   EOT if eos_token_id is None else eos_token_id, tuple((int(i), float(b)) for i, b in sorted(bias.items())),
                   float(presence_penalty), float(frequency_penalty))


# ---- Sampling

def top_k_filter(logits, top_k):  # [n_vocab] -> [n_vocab]
    """Logits below the k-th largest become -inf (ties with it stay). [1, 3, 2], k=2 -> [-inf, 3, 2].

    A k beyond the vocabulary keeps every token, as HuggingFace's TopKLogitsWarper does.
    """
    top_k = min(top_k, len(logits))
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


def sampling_logits(logits, temperature, top_k=None, top_p=None):  # [n_vocab] -> [n_vocab]
    """The logits a draw is made from: divided by the temperature, -inf outside the top k and the top p."""
    logits = logits / np.float32(temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = np.where(top_p_filter(softmax(logits), top_p) > 0, logits, -np.inf).astype(logits.dtype)
    return logits


def draw(logits, rng):  # [n_vocab] -> token id
    """A token drawn with rng (a np.random.Generator) from softmax(logits)."""
    cdf = np.cumsum(softmax(logits))
    return int(min(np.searchsorted(cdf, rng.random(dtype=np.float32) * cdf[-1], side="right"), len(cdf) - 1))


def sample(logits, temperature=0.0, top_k=None, top_p=None, rng=None):  # [n_vocab] -> token id
    """Greedy when temperature is 0; otherwise a draw, with `rng` (a np.random.Generator), from the
    tempered, top-k and top-p filtered softmax: what chooser() does with no controls."""
    return chooser(Controls(), temperature, top_k, top_p, rng)([], 0, logits)[0]


def chooser(controls, temperature=0.0, top_k=None, top_p=None, rng=None):
    """choose(ids, n_new, logits [n_vocab]) -> (token id, the logits it was chosen from): the controls, then greedy
    or a draw. The logits returned are the processed distribution: log_softmax of them is what HF's
    compute_transition_scores(output_scores, normalize_logits=True) gives."""
    def choose(ids, n_new, logits):
        logits = controls(ids, n_new, logits)
        if temperature == 0:
            return int(np.argmax(logits)), logits
        logits = sampling_logits(logits, temperature, top_k, top_p)
        return draw(logits, rng), logits
    return choose


# ---- Log-probabilities of what was chosen

class Logprob(NamedTuple):
    """What the model made of one generated token.

    logprob    its natural-log probability under the model's own distribution: log_softmax of the raw
               logits, before any control, temperature, top-k or top-p (HF's compute_transition_scores
               of output_logits with normalize_logits=True);
    top        the `logprobs` most likely tokens under that same distribution, [(id, logprob), ...], best first;
    processed  its log-probability under the distribution it was actually chosen from: after the controls,
               and when sampling after temperature, top-k and top-p (HF's output_scores, normalized); in beam
               search, the processed log-prob the beam's score added up (HF's beam scores, step by step).
    """
    logprob: float
    top: list
    processed: float


def top_indices(x, n):  # [m] -> [n]
    """The indices of the n largest values, largest first, the lower index first among equals."""
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    best = np.argpartition(x, -n)[-n:]
    return best[np.lexsort((best, -x[best]))]


def token_logprob(logprobs, token_id, n_top, processed):  # [n_vocab] model log-probs -> Logprob
    return Logprob(float(logprobs[token_id]), [(int(i), float(logprobs[i])) for i in top_indices(logprobs, n_top)],
                   float(processed))


# ---- Checking what the user asked for

def check_sampling(temperature, top_k, top_p):
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and not is_whole(top_k, 1):
        raise ValueError(f"top_k must be a whole number of at least 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")


def is_whole(value, least):
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= least


def is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def check_logprobs(logprobs, n_vocab):
    if logprobs is not None and not (is_whole(logprobs, 0) and logprobs <= n_vocab):
        raise ValueError(f"logprobs must be None, or how many of the most likely tokens to list beside each chosen "
                         f"one, from 0 to {n_vocab}; got {logprobs!r}")
