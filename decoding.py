"""Choosing the next token from the model's logits: greedy, or a draw after temperature, top-k and top-p.

Sampling follows nanoGPT's chain: divide by temperature, keep the top k, keep the top p, draw. Every
function here knows only logits and ids, never the model, so each can be tested on fixed inputs.
"""
import math

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


def check_sampling(temperature, top_k, top_p):
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be a whole number of at least 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
