"""Token ids -> printable text, for streaming: whole UTF-8 characters only, and stop strings matched
across token boundaries; and the table of their log-probs.
"""
from gpt2 import generate_stream


class TextStream:
    """Ids in, printable text out, for one sequence: only whole UTF-8 characters, <|endoftext|>
    never shown when it ends the text, and text that ends just before the first stop string.

    Text that could still be the start of a stop string is held back until it cannot be. `after` are ids shown
    before this text (an echoed prompt, see whole_characters): the bytes of their unfinished last character,
    if any, start this text.
    """

    def __init__(self, encoder, stop=(), stop_at_eot=True, after=()):
        self.decoder, self.stop = encoder.incremental_decoder(), [s for s in stop if s]
        self.end = encoder.eot_token if stop_at_eot else None  # the tokenizer's <|endoftext|>, if it has one
        self.held, self.done = "", False
        for token_id in after:
            self.decoder.decode(token_id)

    def add(self, token_id):
        if self.done:
            return ""
        if token_id == self.end:
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
    strings, matched on the decoded text across token boundaries. Other options as for generate,
    but one text, of ids alone: for log-probs, give generate_stream's ids and Logprobs to text_pieces.
    """
    if options.get("logprobs") is not None or options.get("num_return_sequences", 1) != 1:
        raise ValueError("stream_text makes one text from ids alone: for several, or with logprobs, call "
                         "gpt2.generate_stream and give its ids to textstream.text_pieces")
    options.setdefault("eos_token_id", encoder.eot_token)  # the end token the text stream knows
    tokens = generate_stream(ids, params, n_head, n_tokens, stop_at_eot=stop_at_eot, **options)
    return text_pieces(tokens, encoder, stop, stop_at_eot)


def text_pieces(token_ids, encoder, stop=(), stop_at_eot=True):
    """Printable text pieces of these ids as they come, ending as stream_text's do; no more ids are taken then."""
    text = TextStream(encoder, stop, stop_at_eot)
    for token_id in token_ids:
        piece = text.add(token_id)
        if piece:
            yield piece
        if text.done:
            return
    piece = text.flush()
    if piece:
        yield piece


def whole_characters(ids, encoder):
    """The text of ids up to their last whole character: what shows of a prompt that a TextStream(after=ids)
    continues. [47249] (the first 3 bytes of an emoji) -> ""."""
    decoder = encoder.incremental_decoder()
    return "".join(decoder.decode(i) for i in ids)


def decode_text(ids, encoder, stop=(), stop_at_eot=True):
    """What stream_text would have printed for these ids, in one string."""
    return "".join(text_pieces(ids, encoder, stop, stop_at_eot))


def logprob_table(ids, logprobs, encoder):
    """Generated ids and their decoding.Logprobs as a table, a line for each: the log-prob under the model, as
    chosen (after the controls, temperature, top-k and top-p), and the model's most likely tokens at that step."""
    token = lambda i: repr(encoder.decode([i]))
    header = f"{'step':>4}  {'id':>6}  {'log-prob':>9}  {'as chosen':>9}  {'token':<16}"
    lines = [header + "  most likely" * bool(logprobs[0].top)]
    for step, (token_id, logprob) in enumerate(zip(ids, logprobs), start=1):
        top = "  ".join(f"{token(i)} {value:.4f}" for i, value in logprob.top)
        row = f"{step:>4}  {token_id:>6}  {logprob.logprob:>9.4f}  {logprob.processed:>9.4f}  {token(token_id):<16}  {top}"
        lines.append(row.rstrip())
    return "\n".join(lines)
