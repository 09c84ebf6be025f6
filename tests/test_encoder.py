"""encoder.py against tiktoken's "gpt2" encoding (built offline from the shipped vocab), plus known answers."""
import hashlib
import heapq
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import encoder
from benchmarks.tokenizer import english_prose, tiktoken_gpt2

VOCAB_DIR = Path(__file__).resolve().parent.parent / "vocab"
EOT = "<|endoftext|>"
PROPERTY = settings(max_examples=400, deadline=None, database=None)


@pytest.fixture(scope="module")
def enc():
    return encoder.get_encoder()


@pytest.fixture(scope="module")
def tik():
    return tiktoken_gpt2()


CORPUS = {
    "empty": "",
    "prose": (
        "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of "
        "times; Mr. O'Neil paid $3.50 for 2 coffees (one decaf) at 7:45 a.m. -- \"cheap,\" he said.\n\n"
        "A second paragraph, after a blank line: e.g., i.e., etc. U.S.A.! Why? Because... well.\n"
    ),
    "code": (
        "def f(x, *args, **kwargs):\n    \"\"\"Docstring.\"\"\"\n    if x >= 0x1F and not args:\n"
        "\t\treturn {'a': [1, 2.5e-3], \"b\": None}  # comment\n    return x ** 2 // 3 % 4\n\n\n"
        "int main(void) { printf(\"%d\\n\", a[i++]); return 0; }\n"
        "    \n  \t  \n}}}]]])))=>!==&&||::;;\n"
    ),
    "numbers": "3.14159 1,000,000 2024-01-01 -42 +7 1e-10 0.000001 12345678901234567890 007",
    "digit run": "1234567890" * 100,
    "unicode digits": "٣٤٥ ١٢ १२३ ½ ¾ ² ³ Ⅻ ⅷ 𝟙𝟚𝟛 ①②③",
    "leading spaces": "     indented",
    "trailing spaces": "trailing     ",
    "only spaces": "        ",
    "only newlines": "\n\n\n\n",
    "tabs": "\ta\t\tb\t\t\t",
    "mixed whitespace": " \t \n \r\n\t\t\n   x \n\t y\t\n \n",
    "space runs": "a b  c   d    e     f" + " " * 50 + "g\n" + " " * 17,
    "windows newlines": "line one\r\nline two\r\n\r\n",
    "unicode spaces": "a\u00a0b\u2003c\u3000d\u2028e\u2029f\u0085g\u200bh\ufeffi",
    "contractions": "I'm you're we've they'll she'd it's don't can't 'twas o'clock",
    "contractions upper": "I'M YOU'RE WE'VE THEY'LL SHE'D IT'S DON'T CAN'T 'TWAS",
    "contractions mixed": "It'S We'Re 's 't 're 've 'm 'll 'd ''s '' ' rock 'n' roll",
    "curly apostrophe": "don’t it’s ‘quoted’ “double”",
    "accents": "café naïve résumé Ångström crème brûlée Tiếng Việt Łódź straße",
    "combining marks": "cafe\u0301 n\u0303 a\u030a Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǫ̗̻̈́",
    "cjk": "日本語のテキスト、漢字とかなを含む。中文分词测试。한국어 텍스트입니다.",
    "arabic": "مرحبا بالعالم! هذا نص عربي، مع أرقام ١٢٣.",
    "hebrew": "שלום עולם",
    "devanagari": "नमस्ते दुनिया, यह हिन्दी पाठ है।",
    "thai": "สวัสดีชาวโลก",
    "emoji": "👍 😀🙃 ❤️ ✨ 🔥🔥🔥",
    "emoji skin tones": "👍🏻 👍🏽 👋🏿 🧑🏾‍💻",
    "emoji zwj": "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👩‍❤️‍💋‍👨",
    "emoji flags": "🇺🇸🇯🇵🇪🇺 🇬🇧",
    "keycaps": "1️⃣ #️⃣ *️⃣",
    "control chars": "\x00\x01\x02 \x1b[31mred\x1b[0m \x7f \x08\x07",
    "separator controls": "a\x1cb\x1dc\x1ed\x1fe\x0bf\x0cg",
    "special-looking": "<|endoftext|> <|endoftext <|startoftext|> |>",
    "astral letters": "𝐀𝐁𝐂 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 𓀀",
    "private use and noncharacters": "\ue000\uf8ff\ufffe\uffff\U0010ffff",
    "replacement char": "\ufffd\ufffd",
}


@pytest.mark.parametrize("text", CORPUS.values(), ids=CORPUS.keys())
def test_matches_tiktoken_and_round_trips(enc, tik, text):
    ids = enc.encode(text)
    assert ids == tik.encode_ordinary(text)
    assert enc.decode(ids) == text


@pytest.mark.parametrize("text, ids", [
    ("hello world", [31373, 995]),
    ("Hello, world!", [15496, 11, 995, 0]),
    (" tokenizer", [11241, 7509]),
    (EOT, [27, 91, 437, 1659, 5239, 91, 29]),
    ("👍", [41840, 235]),
    ("", []),
])
def test_known_answers(enc, text, ids):
    assert enc.encode(text) == ids
    assert enc.decode(ids) == text


def test_contractions_split_lower_case_only(enc):
    def pieces(text):
        return [enc.decode([i]) for i in enc.encode(text)]

    assert pieces("don't") == ["don", "'t"]
    assert pieces("DON'T") == ["DON", "'", "T"]
    assert pieces("he'll") == ["he", "'ll"]
    assert pieces("HE'LL") == ["HE", "'", "LL"]


def test_python_docs_and_stdlib_source(enc, tik):
    texts = [english_prose()] + [Path(m.__file__).read_text(encoding="utf-8") for m in (heapq, random, shutil)]
    for text in texts:
        ids = enc.encode(text)
        assert ids == tik.encode_ordinary(text)
        assert enc.decode(ids) == text


def test_surrogates_are_replaced_like_tiktoken(enc, tik):
    lone = "a\ud800b \udfff \ud83d"
    assert enc.encode(lone) == tik.encode_ordinary(lone) == enc.encode("a\ufffdb \ufffd \ufffd")
    pair = "\ud83d\ude00"  # a UTF-16 surrogate pair is joined into the character it encodes
    assert enc.encode(pair) == tik.encode_ordinary(pair) == enc.encode("😀")


@pytest.mark.parametrize("alphabet", ["a", "abcdefghijklmnopqrstuvwxyz", "0123456789", "\n", "😀é"])
def test_long_pieces_match_tiktoken(enc, tik, alphabet):
    rng = random.Random(0)
    text = "".join(rng.choice(alphabet) for _ in range(100_000))
    assert enc.encode(text) == tik.encode_ordinary(text)


def test_long_word_takes_a_linear_number_of_heap_operations(enc, tik, monkeypatch):
    """BPE on one 80k-letter word: O(n) heap operations of O(log n) each, never a rescan per merge.

    Counted, not timed: n - 1 first candidates, then per merge one pop and at most two pushes,
    and every stale candidate is popped once, so the total stays under 6n.
    """
    calls = []

    class CountingHeapq:
        def __getattr__(self, name):
            def counted(*args):
                calls.append(name)
                return getattr(heapq, name)(*args)
            return counted

    monkeypatch.setattr(encoder, "heapq", CountingHeapq())
    rng = random.Random(0)
    n = 80_000
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
    assert enc.encode(word) == tik.encode_ordinary(word)
    assert calls.count("heappop") > n // 2  # the heap really did the merging
    assert len(calls) < 6 * n


def test_cache_is_bounded(enc, tik, monkeypatch):
    monkeypatch.setattr(encoder, "CACHE_SIZE", 50)
    enc._cache.clear()
    text = " ".join(f"word{i}" for i in range(500)) + " " + "x" * (encoder.CACHE_MAX_LEN + 1)
    assert enc.encode(text) == tik.encode_ordinary(text)
    assert 0 < len(enc._cache) <= 50
    assert all(len(piece) <= encoder.CACHE_MAX_LEN for piece in enc._cache)
    enc._cache.clear()


# Special tokens


@pytest.mark.parametrize("text", [EOT, f"a{EOT}b", f"{EOT}{EOT}", f" {EOT} \n", f"x<|endof{EOT}text|>"])
def test_special_tokens(enc, tik, text):
    assert enc.encode(text) == tik.encode(text, disallowed_special=())
    special = tik.encode(text, allowed_special="all")
    assert enc.encode(text, allowed_special="all") == special
    assert enc.encode(text, allowed_special={EOT}) == special
    assert enc.decode(special) == text
    assert special.count(enc.eot_token) == text.count(EOT)


def test_eot_token(enc):
    assert (enc.n_vocab, enc.eot_token) == (50257, 50256)
    assert enc.decode([50256]) == EOT
    assert enc.encode(EOT, allowed_special={EOT}) == [50256]


@pytest.mark.parametrize("allowed", [EOT, "al", {"<|fim_prefix|>"}, [EOT, "hello"]])
def test_bad_allowed_special(enc, allowed):
    with pytest.raises(ValueError, match="allowed_special|not special tokens"):
        enc.encode("hi", allowed_special=allowed)


# Streaming decode


def test_incremental_decoder_emits_whole_characters(enc):
    dec = enc.incremental_decoder()
    assert [dec.decode(i) for i in [41840, 235]] == ["", "👍"]
    text = "family: 👨‍👩‍👧‍👦 🇯🇵 café 日本"
    chunks = [dec.decode(i) for i in enc.encode(text)]
    assert "".join(chunks) == text
    assert "\ufffd" not in "".join(chunks)
    assert dec.flush() == ""


def test_incremental_decoder_replaces_invalid_bytes(enc):
    dec = enc.incremental_decoder()
    assert dec.decode(41840) == ""  # first three bytes of 👍
    assert dec.flush() == "\ufffd"
    assert dec.decode(31373) == "hello"  # usable after a flush
    assert dec.decode(enc.ranks[b"\xff"]) == "\ufffd"  # never valid: replaced at once, not held
    assert dec.decode(50256) == EOT


@PROPERTY
@given(st.lists(st.integers(0, 50256), max_size=40))
def test_incremental_decoder_agrees_with_decode(enc, ids):
    dec = enc.incremental_decoder()
    assert "".join(dec.decode(i) for i in ids) + dec.flush() == enc.decode(ids)


# Property tests against tiktoken

FRAGMENTS = ["'s", "'S", "'t", "'ll", "'", " ", "  ", "\t", "\n", "\r\n", "a", "Hello", " world", "don",
             "1", "42", "٣", "é", "e\u0301", "日本", "👍", "🏽", "\u200d", "🇺", ".", "!?", "\x00", "\u00a0",
             EOT, "<|", "endoftext", "|>"]


@PROPERTY
@given(st.text())
def test_any_text_matches_tiktoken(enc, tik, text):
    ids = enc.encode(text)
    assert ids == tik.encode_ordinary(text)
    assert enc.decode(ids) == text


@PROPERTY
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join))
def test_tricky_text_matches_tiktoken(enc, tik, text):
    assert enc.encode(text) == tik.encode_ordinary(text)
    special = enc.encode(text, allowed_special="all")
    assert special == tik.encode(text, allowed_special="all")
    assert enc.decode(special) == text
    dec = enc.incremental_decoder()
    assert "".join(dec.decode(i) for i in special) + dec.flush() == text


@PROPERTY
@given(st.text(st.characters() | st.characters(categories=["Cs"])))
def test_text_with_surrogates_matches_tiktoken(enc, tik, text):
    assert enc.encode(text) == tik.encode_ordinary(text)


# Bad input


@pytest.mark.parametrize("bad_id", [50257, -1, 10**9])
def test_out_of_range_ids_raise(enc, bad_id):
    with pytest.raises(ValueError, match=str(bad_id)):
        enc.decode([31373, bad_id])
    with pytest.raises(ValueError, match=str(bad_id)):
        enc.incremental_decoder().decode(bad_id)


def test_ids_must_be_integers(enc):
    assert enc.decode(np.array([31373, 995])) == "hello world"
    with pytest.raises(TypeError, match="integers"):
        enc.decode([1.0])


@pytest.mark.parametrize("text", [b"hello", None, ["hello"], 42])
def test_encode_needs_str(enc, text):
    with pytest.raises(TypeError, match="str"):
        enc.encode(text)


# Vocab files


def test_shipped_vocab_sha256():
    expected = {
        "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    }
    for name, digest in expected.items():
        assert hashlib.sha256((VOCAB_DIR / name).read_bytes()).hexdigest() == digest
    assert encoder.SHA256 == expected


@pytest.mark.parametrize("size", encoder.MODEL_SIZES)
def test_get_encoder_needs_no_download(size, tmp_path):
    models_dir = tmp_path / "models"
    assert encoder.get_encoder(size, str(models_dir)).encode("hello world") == [31373, 995]
    assert not models_dir.exists()


def test_get_encoder_rejects_unknown_size():
    with pytest.raises(ValueError, match="124M"):
        encoder.get_encoder("7B")


def copy_vocab(tmp_path):
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(VOCAB_DIR / name, tmp_path / name)
    return tmp_path / "encoder.json", tmp_path / "vocab.bpe"


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe"])
def test_corrupt_vocab_fails_its_hash(tmp_path, name):
    paths = copy_vocab(tmp_path)
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*SHA-256"):
        encoder.load_encoder(*paths)


def swap_byte_and_merge_ids(text):
    ids = json.loads(text)
    ids["!"], ids["\u0120t"] = ids["\u0120t"], ids["!"]  # "!" is byte token 0, "Ġt" merge token 256
    return json.dumps(ids)


def swap_lines_2_and_3(text):
    lines = text.split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    return "\n".join(lines)


@pytest.mark.parametrize("name, corrupt", [
    ("encoder.json", lambda text: text[:-10]),
    ("encoder.json", lambda text: "[1, 2, 3]"),
    ("encoder.json", lambda text: text.replace('"!": 0', '"!": 7', 1)),
    ("encoder.json", swap_byte_and_merge_ids),
    ("vocab.bpe", swap_lines_2_and_3),
    ("vocab.bpe", lambda text: text[: len(text) // 2]),
    ("vocab.bpe", lambda text: text.replace("\u0120 t\n", "\u0120 t x\n", 1)),
])
def test_unparsable_vocab_is_named(tmp_path, name, corrupt):
    paths = copy_vocab(tmp_path)
    path = tmp_path / name
    path.write_text(corrupt(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} does not parse"):
        encoder.load_encoder(*paths, check_hashes=False)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        encoder.load_encoder(*paths)


def test_missing_vocab_file(tmp_path):
    encoder_json, vocab_bpe = copy_vocab(tmp_path)
    vocab_bpe.unlink()
    with pytest.raises(FileNotFoundError, match="vocab.bpe"):
        encoder.load_encoder(encoder_json, vocab_bpe)


def test_load_encoder_from_copies(tmp_path, enc):
    copy = encoder.load_encoder(*copy_vocab(tmp_path))
    assert copy.ranks == enc.ranks and copy.special_tokens == enc.special_tokens


def test_the_shipped_merges_are_what_the_ids_say(enc):
    """get_encoder skips reading vocab.bpe for the pinned files; this reads and checks every merge of them."""
    checked = encoder.load_encoder(encoder.VOCAB_DIR / "encoder.json", encoder.VOCAB_DIR / "vocab.bpe", check_hashes=False)
    assert checked.ranks == enc.ranks and checked.special_tokens == enc.special_tokens
