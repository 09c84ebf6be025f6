"""Token ids -> printable text, for streaming: whole UTF-8 characters only, and stop strings matched
across token boundaries.
"""
from gpt2 import EOT, generate_stream


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
