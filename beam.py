"""Beam search's bookkeeping for one prompt, scored as HuggingFace transformers' `_beam_search` scores it.

It knows log-probabilities and token ids only; generation.beam_steps runs the model and reorders the KV cache.
Each step, for num_beams beams:
- every continuation of every running beam scores the beam's score plus the token's (processed) log-prob, and
  the best 2 * num_beams of them are candidates, best first;
- a candidate that ends (with the end token, GPT-2's <|endoftext|>, or as the n_tokens-th token) becomes a
  hypothesis only if it is among the first num_beams: its score is then sum / length ** length_penalty
  (length counts the generated tokens, the end token included), and the num_beams best hypotheses are kept;
- the num_beams best candidates that do not end run on;
- the search is done after the n_tokens-th token, or when HF's heuristic says no running beam can beat the
  worst of num_beams hypotheses: it divides the best running score by length ** length_penalty, where length
  is the tokens generated so far, or n_tokens when early_stopping is "never" and length_penalty > 0; or, with
  early_stopping=True, as soon as there are num_beams hypotheses.
A hypothesis is (score, tokens, extras): `extras` holds whatever the caller attached to each token (log-probs).
"""
import numpy as np

from decoding import EOT, is_number, is_whole, top_indices


class BeamSearch:
    def __init__(self, num_beams, n_tokens, length_penalty=1.0, early_stopping=False, eos=EOT):
        self.num_beams, self.n_tokens, self.length_penalty = num_beams, n_tokens, length_penalty
        self.early_stopping, self.eos = early_stopping, eos  # eos: the token that ends a beam, None for none
        self.tokens, self.extras = [[]], [[]]  # of each running beam: one, the prompt, until the first step
        self.scores = np.zeros(1, dtype=np.float32)  # [n_running] sums of processed log-probs, best first
        self.hypotheses = []  # [(score, tokens, extras)], best first, at most num_beams
        self.done = False

    def step(self, logprobs, extra=None):  # [n_running, n_vocab] -> [num_beams] running beams continued
        """Take one step with these processed log-probs of each running beam's next token. Returns the running
        beam each new running beam continues (its row in `logprobs`); self.tokens[i][-1] is what it adds.
        `extra(beam, token)`, if given, makes what to keep beside each token (see self.extras)."""
        assert not self.done, "a finished search takes no more steps"
        k, n_vocab = self.num_beams, logprobs.shape[-1]
        length = len(self.tokens[0]) + 1  # of every candidate
        totals = (logprobs + self.scores[:, None]).ravel()  # float32, as HF adds them
        best = top_indices(totals, 2 * k)
        beams, tokens = np.divmod(best, n_vocab)
        ends = (tokens == self.eos) | (length >= self.n_tokens)
        candidates = [(self.tokens[b] + [int(t)], self.extras[b] + [extra(b, int(t)) if extra else None])
                      for b, t in zip(beams, tokens)]
        penalty = np.float32(length**self.length_penalty)
        for i in np.flatnonzero(ends[:k]):
            self.hypotheses.append((totals[best[i]] / penalty, *candidates[i]))
        self.hypotheses = sorted(self.hypotheses, key=lambda h: -h[0])[:k]  # stable: earlier ones first among equals
        running = np.flatnonzero(~ends)[:k]
        self.tokens, self.extras = [candidates[i][0] for i in running], [candidates[i][1] for i in running]
        self.scores = totals[best[running]]
        self.done = length >= self.n_tokens or self.cannot_improve(length)
        return beams[running]

    def cannot_improve(self, length):
        """HF's stopping rule, after a step that made `length` tokens: see the module's docstring."""
        if len(self.hypotheses) < self.num_beams:
            return False
        if self.early_stopping is True:
            return True
        if self.early_stopping == "never" and self.length_penalty > 0:
            length = self.n_tokens
        return not self.scores[0] / np.float32(length**self.length_penalty) > self.hypotheses[-1][0]

    def best(self, n):
        """The n best hypotheses, best first: [(score, tokens, extras)]."""
        assert self.done and len(self.hypotheses) >= n, "the search has not finished"
        return self.hypotheses[:n]


def check_search(num_beams, length_penalty, early_stopping, num_return_sequences, temperature, slide):
    """A ValueError saying what to change when these options cannot go together."""
    if not is_whole(num_beams, 1):
        raise ValueError(f"num_beams must be a whole number of at least 1 (1 is no beam search), got {num_beams!r}")
    if not (is_number(length_penalty) and np.isfinite(length_penalty)):
        raise ValueError(f"length_penalty must be a number (above 0 favours longer texts), got {length_penalty!r}")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or \"never\", got {early_stopping!r}")
    n = num_return_sequences
    if not is_whole(n, 1):
        raise ValueError(f"num_return_sequences must be a whole number of at least 1, got {n!r}")
    if num_beams > 1 and temperature != 0:
        raise ValueError(f"beam search (num_beams {num_beams}) is a search, not a draw: give temperature 0, "
                         f"or num_beams 1 to sample")
    if num_beams > 1 and slide:
        raise ValueError("beam search cannot slide its window beyond n_ctx: drop slide, or num_beams")
    if n > num_beams and num_beams > 1:
        raise ValueError(f"num_return_sequences ({n}) is more than num_beams ({num_beams}): beam search keeps only "
                         f"num_beams texts; raise num_beams or lower num_return_sequences")
    if n > 1 and num_beams == 1 and temperature == 0:
        raise ValueError(f"num_return_sequences {n} with greedy decoding would give {n} copies of one text: sample "
                         f"(temperature above 0) or search (num_beams at least {n})")
