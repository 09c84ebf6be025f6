"""Tokenizer throughput: encoder.py against tiktoken's "gpt2" encoding on the same text.

    python -m benchmarks.tokenizer

Corpora, all read from the Python install, so nothing is downloaded:
- English prose: the plain-text documentation topics that ship with CPython (pydoc_data.topics),
- source code: the top-level modules of the standard library, first 1 MB,
- stress: one 100k-letter word and one 100k-digit number (long pre-tokens, where a naive BPE
  goes quadratic).

Both run on one thread: tiktoken through `Encoding.encode_ordinary` on the whole text (its
batch methods are the multi-threaded ones). Ours is timed with its cache emptied before every
run ("cold") and again with the cache left from the previous run ("warm"). Best of 3.
"""
import os
import random
import sysconfig
import time
from pathlib import Path

from encoder import VOCAB_DIR, get_encoder


def tiktoken_gpt2():
    """tiktoken's "gpt2" encoding built as tiktoken_ext.openai_public builds it, from the shipped files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files directly, leave no cached copies
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(str(VOCAB_DIR / "vocab.bpe"), str(VOCAB_DIR / "encoder.json"))
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


def english_prose():
    """CPython's documentation topics as one text, about 0.5 MB of English."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def source_code(limit=1_000_000):
    """The standard library's top-level modules, concatenated up to `limit` characters."""
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in paths)[:limit]


def best_time(fn, text, before=None, repeats=3):
    """Fastest of `repeats` runs of fn(text), in seconds; `before` runs untimed ahead of each."""
    best = float("inf")
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - start)
    return best


def main():
    enc, tik = get_encoder(), tiktoken_gpt2()
    rng = random.Random(0)
    corpora = {
        "English prose (pydoc topics)": english_prose(),
        "Python source (stdlib)": source_code(),
        "one 100k-letter word": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100_000)),
        "one 100k-digit number": "".join(rng.choice("0123456789") for _ in range(100_000)),
    }
    print(f"{'corpus':30} {'MB':>6} {'ours cold':>10} {'ours warm':>10} {'tiktoken':>10} {'cold/tiktoken':>14}")
    for name, text in corpora.items():
        if enc.encode(text) != tik.encode_ordinary(text):
            raise SystemExit(f"ids differ from tiktoken on {name}")
        mb = len(text.encode("utf-8")) / 1e6
        cold = best_time(enc.encode, text, before=enc._cache.clear)
        warm = best_time(enc.encode, text)
        theirs = best_time(tik.encode_ordinary, text)
        print(f"{name:30} {mb:6.2f} {mb / cold:10.2f} {mb / warm:10.2f} {mb / theirs:10.2f} {theirs / cold:13.2f}x")
    print("MB/s, best of 3, one thread; tiktoken via encode_ordinary; ids checked equal to tiktoken's")


if __name__ == "__main__":
    main()
