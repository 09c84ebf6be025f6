"""The prefix cache: the keys and values of prompts read recently, so that a prompt that begins with one of them
reads only the rest (lm-eval sends each context once per answer; a chat resends its whole history).

GPT-2's position embeddings are absolute: a prompt's keys and values hold its positions from 0, so only a prefix
that starts at position 0 can be reused, never a passage met in the middle of another prompt. An entry keeps a
prompt's KV cache (one row, no spare room), the logits of its last position, and, when a request asked for them,
each token's log-prob and its MAX_TOP likeliest at every position (an echoed prompt's log-probs). Entries go, least
recently used first, when their bytes would pass the budget.
"""
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

MAX_TOP = 5  # the likeliest tokens an entry keeps at each position: as many as a request may ask for


class Entry(NamedTuple):
    ids: tuple
    cache: object  # kvcache.KVCache, one row, len(ids) positions
    last_logits: np.ndarray  # [n_vocab]
    echo: tuple  # (logprobs [n - 1], top ids [n - 1, MAX_TOP], top log-probs [n - 1, MAX_TOP]), or None

    @property
    def nbytes(self):
        n_layer, _, n_head, n_past, d = self.cache.shape
        return 2 * n_layer * n_head * n_past * d * 4 + self.last_logits.nbytes + sum(a.nbytes for a in self.echo or ())


class PrefixCache:
    def __init__(self, budget_bytes):
        self.budget, self.entries, self.nbytes = budget_bytes, OrderedDict(), 0
        self.hits = self.reused_tokens = 0

    def longest(self, ids, with_echo):
        """(the entry sharing the longest prefix with ids, that prefix's length), or (None, 0); with_echo: only
        entries that hold their prompt's log-probs."""
        best, best_n = None, 0
        for entry in self.entries.values():
            if with_echo and entry.echo is None:
                continue
            n = common_prefix(entry.ids, ids)
            if n > best_n:
                best, best_n = entry, n
        if best is not None:
            self.entries.move_to_end(best.ids)  # used: the last to go
        return best, best_n

    def add(self, entry):
        """Keep this entry (replacing one for the same ids), then drop the least recently used past the budget."""
        if entry.nbytes > self.budget:
            return
        old = self.entries.pop(entry.ids, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self.entries[entry.ids] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.budget:
            _, gone = self.entries.popitem(last=False)
            self.nbytes -= gone.nbytes


def common_prefix(a, b):
    """How many tokens a and b share from the start. (1, 2, 3), (1, 2, 4) -> 2."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n
