"""GPT-2's tokenizer: byte-level BPE over the vocab OpenAI published with the model.

Text is split into pre-tokens by a regex (words with their leading space, numbers, punctuation
runs, whitespace), each pre-token's UTF-8 bytes are merged pairwise by BPE, and each resulting
byte string is one token id. This follows OpenAI's gpt-2 `src/encoder.py` and gives exactly the
ids of tiktoken's "gpt2" encoding (its regex, its lowest-rank-leftmost merge order), which
tests/test_encoder.py checks. Bytes are merged directly (no per-byte unicode stand-ins), with a
bounded cache of pre-tokens and a heap-based merge that stays O(n log n) on very long words:
about four times OpenAI's original speed on English (benchmarks/tokenizer.py).

Choices worth knowing:
- `<|endoftext|>` in text is ordinary text unless `allowed_special` lets it through, like
  OpenAI's encoder (tiktoken's `encode` would raise instead).
- Lone surrogates (which have no UTF-8 form) become U+FFFD and surrogate pairs are joined, as in
  tiktoken's `encode`, so every str encodes.
- `decode` replaces invalid UTF-8 with U+FFFD; `incremental_decoder()` streams text out only
  once its bytes are whole characters.

The vocab (vocab/encoder.json, vocab/vocab.bpe) is the same for all four model sizes and ships
with the repo, checked against the SHA-256 that tiktoken pins, so tokenizing never downloads.
"""
import codecs
import hashlib
import heapq
import itertools
import json
import operator
from pathlib import Path

import regex

MODEL_SIZES = ("124M", "355M", "774M", "1558M")  # OpenAI's four GPT-2 sizes; utils.py uses this list too
VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
ENDOFTEXT = "<|endoftext|>"

# tiktoken's faster equivalent of GPT-2's original pattern
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# Contractions are lower-case only: "DON'T" splits as "DON", "'", "T".
PAT = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")

CACHE_SIZE = 1 << 16  # pre-tokens remembered; the cache is emptied when full
CACHE_MAX_LEN = 256  # longer pre-tokens are rarely repeated and are not cached


def bytes_to_unicode():
    """GPT-2's printable stand-in for each byte, used to write bytes in its vocab files.

    {33: "!", ..., 126: "~", ..., 0: "Ā", ..., 32: "Ġ", ...}: printable bytes stand for
    themselves, the other 68 are shifted to chr(256 + k).
    """
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Encoder:
    """Byte-level BPE: `ranks` orders the merges, `ids` numbers the tokens; in GPT-2's vocab they are one dict.

    ranks maps the bytes of each token a merge makes to that merge's rank (lower merges first, as tiktoken
    does); ids maps every token's bytes to its id. A vocab built from HF files (build_encoder) may number its
    tokens otherwise than its merges. `special_tokens` ({"<|endoftext|>": 50256}) are text unless
    `allowed_special` lets them through; `added_tokens`, words a fine-tune added, are always matched, as HF does.
    """

    def __init__(self, ranks, special_tokens, ids=None, added_tokens=None):
        self.ranks = ranks  # {b"hello": 31373, b" world": 995, ...}
        self.ids = ranks if ids is None else ids
        self.special_tokens = special_tokens  # {"<|endoftext|>": 50256}
        self.added_tokens = added_tokens or {}
        self.n_vocab = len(self.ids) + len(special_tokens) + len(self.added_tokens)
        self.eot_token = special_tokens.get(ENDOFTEXT)
        self._whole = {**special_tokens, **self.added_tokens}  # tokens matched as a whole in text, never by BPE
        self._bytes = [b""] * self.n_vocab  # id -> token bytes
        for token, i in self.ids.items():
            self._bytes[i] = token
        for token, i in self._whole.items():
            self._bytes[i] = token.encode("utf-8")
        self._cache = {}  # pre-token str -> token ids

    def encode(self, text, allowed_special=()):
        """Text -> token ids; special tokens count as ordinary text unless allowed (or "all").

        "hello world" -> [31373, 995]
        "<|endoftext|>" -> [27, 91, 437, 1659, 5239, 91, 29]
        "<|endoftext|>" with allowed_special="all" -> [50256]
        """
        if not isinstance(text, str):
            hint = " (decode bytes to str first)" if isinstance(text, (bytes, bytearray)) else ""
            raise TypeError(f"encode expects a str, got {type(text).__name__}{hint}")
        allowed = self._allowed_special(allowed_special) | self.added_tokens.keys()
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # surrogates: join pairs, lone ones -> U+FFFD, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if not allowed:
            return self._encode_ordinary(text)
        special = regex.compile("|".join(map(regex.escape, sorted(allowed, key=len, reverse=True))))
        ids, start = [], 0
        for match in special.finditer(text):
            ids += self._encode_ordinary(text[start:match.start()])
            ids.append(self._whole[match.group()])
            start = match.end()
        return ids + self._encode_ordinary(text[start:])

    def _allowed_special(self, allowed_special):
        """The special tokens to honour: "all" -> all of them, {"<|endoftext|>"} -> itself, checked."""
        if allowed_special == "all":
            return set(self.special_tokens)
        if isinstance(allowed_special, str):
            raise ValueError(f'allowed_special must be "all" or a set such as {{"{ENDOFTEXT}"}}, '
                             f"not the string {allowed_special!r}")
        allowed = set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"not special tokens: {sorted(unknown)}; "
                             f"the special tokens are {sorted(self.special_tokens)}")
        return allowed

    def _encode_ordinary(self, text):
        """Text with no special tokens -> ids, one cached pre-token at a time."""
        ids, cache = [], self._cache
        for piece in PAT.findall(text):
            try:
                ids += cache[piece]
            except KeyError:
                piece_ids = self._bpe(piece.encode("utf-8"))
                if len(piece) <= CACHE_MAX_LEN:
                    if len(cache) >= CACHE_SIZE:
                        cache.clear()
                    cache[piece] = piece_ids
                ids += piece_ids
        return ids

    def _bpe(self, piece):
        """One pre-token's bytes -> ids, merging the lowest-ranked adjacent pair first (leftmost on ties).

        b" world" -> [995] (already a token); b" tokenizer" -> [11241, 7509]
        """
        if piece in self.ranks:
            return [self.ids[piece]]
        ranks, n = self.ranks, len(piece)
        # The parts form a linked list named by where they start: part i is piece[i:nxt[i]].
        # The heap holds candidate merges (rank, i, j, k) of parts i and j, where j ends at k;
        # one that a later merge made stale is skipped when popped, which keeps this O(n log n).
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        heap = [(rank, i, i + 1, i + 2) for i in range(n - 1) if (rank := ranks.get(piece[i:i + 2])) is not None]
        heapq.heapify(heap)
        while heap:
            _, i, j, k = heapq.heappop(heap)
            if nxt[i] != j or nxt[j] != k:
                continue
            nxt[i], nxt[j] = k, -1
            if k < n:
                prv[k] = i
                rank = ranks.get(piece[i:nxt[k]])
                if rank is not None:
                    heapq.heappush(heap, (rank, i, k, nxt[k]))
            h = prv[i]
            if h >= 0:
                rank = ranks.get(piece[h:k])
                if rank is not None:
                    heapq.heappush(heap, (rank, h, i, k))
        ids, i, token_ids = [], 0, self.ids
        while i < n:
            ids.append(token_ids[piece[i:nxt[i]]])
            i = nxt[i]
        return ids

    def decode(self, ids):
        """Token ids -> text, invalid UTF-8 replaced by U+FFFD. [31373, 995] -> "hello world"."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids):
        """Token ids -> the raw bytes they stand for. [31373, 995] -> b"hello world"."""
        return b"".join(map(self.token_bytes, ids))

    def token_bytes(self, token_id):
        """One id -> its bytes, which may be part of a character. 31373 -> b"hello", 447 -> b"\\xe2\\x80"."""
        try:
            i = operator.index(token_id)
        except TypeError:
            raise TypeError(f"token ids must be integers, got {token_id!r}") from None
        if not 0 <= i < self.n_vocab:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {self.n_vocab})")
        return self._bytes[i]

    def incremental_decoder(self):
        """A decoder for streaming: feed ids one at a time, get text once characters are whole."""
        return IncrementalDecoder(self)


class IncrementalDecoder:
    """`decode(id)` returns the text completed so far (maybe ""); `flush()` returns the rest.

    An emoji spread over three tokens comes out once, whole, with the third. Bytes that can
    never become a character come out as U+FFFD, at the latest on `flush()`.
    """

    def __init__(self, encoder):
        self._encoder = encoder
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, token_id):
        return self._utf8.decode(self._encoder.token_bytes(token_id))

    def flush(self):
        return self._utf8.decode(b"", final=True)


def load_encoder(encoder_json_path, vocab_bpe_path, check_hashes=True):
    """Build an Encoder from GPT-2's encoder.json and vocab.bpe, checking their SHA-256 first.

    vocab.bpe lists the merges in priority order, and merge k makes the token with id 256 + k, so
    a token's id is also its merge rank; a file that breaks this is rejected, naming the file. Files
    that pass the hash are GPT-2's own, where this holds, so their merges are not read again (half of
    the time it takes); check_hashes=False reads and checks them.
    """
    paths = {"encoder.json": Path(encoder_json_path), "vocab.bpe": Path(vocab_bpe_path)}
    data = {}
    for name, path in paths.items():
        data[name] = path.read_bytes()
        digest = hashlib.sha256(data[name]).hexdigest()
        if check_hashes and digest != SHA256[name]:
            raise ValueError(f"{path} has SHA-256 {digest}, not GPT-2's {name} ({SHA256[name]}); "
                             f"the file is corrupt or not GPT-2's, restore it (git checkout vocab/)")
    path = paths["encoder.json"]
    ids = parse_vocab(data["encoder.json"], path)
    special_tokens = {ENDOFTEXT: ids.pop(ENDOFTEXT, None)}
    ranks = dict(zip(tokens_bytes(ids, path), ids.values()))
    if special_tokens[ENDOFTEXT] != len(ranks) or sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path} does not parse: ids must be 0..n-1 with {ENDOFTEXT} last")
    if sorted(i for token, i in ranks.items() if len(token) == 1) != list(range(256)):
        raise ValueError(f"{path} does not parse: ids 0..255 must be the 256 single bytes")

    if check_hashes:  # GPT-2's own files, as pinned: their merges are known to be what the ids say (tests check)
        return Encoder(ranks, special_tokens)
    path = paths["vocab.bpe"]
    merges = parse_merges(data["vocab.bpe"], path)
    if len(merges) != len(ranks) - 256:
        raise ValueError(f"{path} does not parse: {len(merges)} merges for {len(ranks)} tokens")
    made = tokens_bytes((left + right for left, right in merges), path)
    for k, (left, right) in enumerate(merges):
        if ranks.get(made[k]) != 256 + k:
            raise ValueError(f"{path} does not parse: line {k + 2} {left + ' ' + right!r} is not "
                             f"the merge that makes token {256 + k} of encoder.json")
    return Encoder(ranks, special_tokens)


def build_encoder(vocab, merges, added, path):
    """An Encoder from HF's tokenizer files, whose ids need not follow the merges' order.

    vocab ({token: id}) and merges ([(left, right)], in priority order) are written in GPT-2's byte alphabet;
    added is {text: (id, special)}. A merge's rank is its place in merges; a token no merge makes is never
    produced by BPE (as in HF). Raises a ValueError naming `path` unless the vocab holds the 256 single bytes,
    each merge joins two vocab tokens into a third, and the ids, added tokens included, are 0..n-1.
    """
    whole = {i for i, _ in added.values()}
    vocab = {token: i for token, i in vocab.items() if i not in whole}
    ids = dict(zip(tokens_bytes(vocab, path), vocab.values()))
    singles = [bytes([b]) for b in range(256)]
    lacking = [b for b in singles if b not in ids]
    if lacking:
        raise ValueError(f"{path} does not parse: the vocab lacks the single byte {lacking[0]!r}, which byte-level BPE needs")
    lefts, rights = tokens_bytes((m[0] for m in merges), path), tokens_bytes((m[1] for m in merges), path)
    made = [left + right for left, right in zip(lefts, rights)]
    for k, parts in enumerate(zip(lefts, rights, made)):
        if not all(part in ids for part in parts):
            raise ValueError(f"{path} does not parse: merge {k + 1} ({' '.join(merges[k])}) joins or makes a token "
                             f"that is not in the vocab")
    numbered = sorted([*ids.values(), *whole])
    if numbered != list(range(len(numbered))):
        raise ValueError(f"{path} does not parse: the token ids (added tokens included) are not 0..n-1")
    if len(ids) == 256 + len(made) and all(ids[b] == b[0] for b in singles) and \
            all(ids[token] == 256 + k for k, token in enumerate(made)):
        ranks = ids  # GPT-2's own arrangement: each token's id is its merge rank
    else:
        ranks = {b: b[0] for b in singles}
        for k, token in enumerate(made):
            ranks.setdefault(token, 256 + k)
    special = {text: i for text, (i, is_special) in added.items() if is_special}
    plain = {text: i for text, (i, is_special) in added.items() if not is_special}
    return Encoder(ranks, special, ids, plain)


def parse_vocab(data, path):
    """encoder.json / vocab.json bytes -> {token: id}, or a ValueError naming path."""
    try:
        ids = json.loads(data)
    except ValueError as e:
        raise ValueError(f"{path} does not parse: {e}") from None
    if not isinstance(ids, dict) or not all(type(i) is int for i in ids.values()):
        raise ValueError(f"{path} does not parse: expected a JSON object of token -> id")
    return ids


def parse_merges(data, path):
    """vocab.bpe / merges.txt bytes ("#version: 0.2", then "left right" per line) -> [(left, right), ...]."""
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise ValueError(f"{path} does not parse: not UTF-8") from None
    merges = [line.split() for line in lines[1 if lines[0].startswith("#version") else 0:] if line]
    for k, merge in enumerate(merges):
        if len(merge) != 2:
            raise ValueError(f"{path} does not parse: line {k + 2} {' '.join(merge)!r} is not two tokens")
    return merges


# GPT-2's byte alphabet read back: str.translate maps each stand-in to its byte's code point, and anything
# else to U+0100, so that encoding the result as Latin-1 fails exactly for text outside the alphabet.
BYTE_DECODER = {**dict.fromkeys(range(256), 0x100), **{ord(c): b for b, c in bytes_to_unicode().items()}}


def token_bytes(token, path):
    """A token as vocab files write it -> its bytes: "\u0120world" -> b" world"."""
    try:
        return token.translate(BYTE_DECODER).encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{path} does not parse: {token!r} is not written in GPT-2's byte alphabet") from None


def tokens_bytes(tokens, path):
    """token_bytes of many tokens at once (a vocab holds 50k): each character stands for one byte, so the
    tokens are decoded joined, then cut where each one ends."""
    tokens = list(tokens)
    try:
        data = "".join(tokens).translate(BYTE_DECODER).encode("latin-1")
    except UnicodeEncodeError:  # some token is outside the alphabet: find it
        return [token_bytes(token, path) for token in tokens]
    ends = list(itertools.accumulate(map(len, tokens)))
    return [data[end - len(token):end] for token, end in zip(tokens, ends)]


def check_model_size(model_size):
    if model_size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {model_size!r}: choose one of {', '.join(MODEL_SIZES)}")


def get_encoder(model_size="124M", models_dir="models"):
    """GPT-2's tokenizer for `model_size`, from the vocab shipped in vocab/ (no download).

    The vocab is the same for every size; `models_dir` is accepted for picoGPT's signature only.
    """
    check_model_size(model_size)
    return load_encoder(VOCAB_DIR / "encoder.json", VOCAB_DIR / "vocab.bpe")
