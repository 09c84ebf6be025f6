"""The tokenizer of a HuggingFace model folder, as an encoder.Encoder: GPT-2's own when the folder's is GPT-2's.

A folder describes its byte-level BPE with vocab.json + merges.txt (the format of OpenAI's encoder.json and
vocab.bpe), with tokenizer.json (the `tokenizers` library's file: the same vocab and merges under "model",
and "added_tokens"), or with both; added_tokens.json ({text: id}) lists tokens a fine-tune added when there
is no tokenizer.json. When vocab.json and merges.txt are byte for byte GPT-2's (their SHA-256s are those
encoder.py pins) and nothing was added, the tokenizer is the shipped one; otherwise it is built from the
folder (encoder.build_encoder), which allows any vocab size and any numbering.

Added tokens that tokenizer.json marks special (and every entry of added_tokens.json) are text unless
`allowed_special` lets them through, like <|endoftext|>; the others are matched wherever they occur, as
HF does. Settings that would make HF split or mark text otherwise than GPT-2's tokenizer (a normalizer,
another pre-tokenizer, a prefix space, a BOS token added to every text) are refused, naming the field.
"""
import hashlib
import json
from pathlib import Path

import encoder as bpe


def load_hf_encoder(folder):
    """A model folder's tokenizer -> encoder.Encoder, or a ValueError / FileNotFoundError naming the file."""
    folder = Path(folder)
    tokenizer = read_json(folder / "tokenizer.json")
    if tokenizer is not None:
        check_tokenizer_json(folder / "tokenizer.json", tokenizer)
    check_tokenizer_config(folder / "tokenizer_config.json")
    added = added_tokens(folder, tokenizer)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        vocab_data, merges_data = vocab_path.read_bytes(), merges_path.read_bytes()
        is_gpt2 = [hashlib.sha256(vocab_data).hexdigest(), hashlib.sha256(merges_data).hexdigest()] == \
            [bpe.SHA256["encoder.json"], bpe.SHA256["vocab.bpe"]]
        if is_gpt2 and set(added) <= {bpe.ENDOFTEXT} and added.get(bpe.ENDOFTEXT, (50256,))[0] == 50256:
            return bpe.get_encoder()
        vocab, merges, path = bpe.parse_vocab(vocab_data, vocab_path), bpe.parse_merges(merges_data, merges_path), vocab_path
    elif tokenizer is not None:
        path, model = folder / "tokenizer.json", tokenizer.get("model") or {}
        vocab, merges = model.get("vocab"), model.get("merges")
        if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()) or not isinstance(merges, list):
            raise ValueError(f"{path} does not parse: its model has no vocab {{token: id}} and merges list")
        # tokenizers writes each merge as "left right", or (since 0.20) as ["left", "right"]
        merges = [m.split(" ") if isinstance(m, str) else m for m in merges]
        if not all(isinstance(m, list) and len(m) == 2 and all(isinstance(t, str) for t in m) for m in merges):
            raise ValueError(f"{path} does not parse: a merge is not a pair of tokens")
    else:
        raise FileNotFoundError(f"{folder} has no tokenizer: put GPT-2's vocab.json and merges.txt (or the model's "
                                f"own, or its tokenizer.json) beside its config.json")
    if bpe.ENDOFTEXT in vocab and bpe.ENDOFTEXT not in added:  # GPT2Tokenizer makes it special by default
        added[bpe.ENDOFTEXT] = (vocab[bpe.ENDOFTEXT], True)
    return bpe.build_encoder(vocab, merges, added, path)


def added_tokens(folder, tokenizer):
    """{text: (id, special)} from tokenizer.json's added_tokens, else from added_tokens.json (all special)."""
    if tokenizer is not None:
        path, added = folder / "tokenizer.json", {}
        for token in tokenizer.get("added_tokens") or []:
            if not (isinstance(token, dict) and isinstance(token.get("content"), str) and type(token.get("id")) is int):
                raise ValueError(f"{path} does not parse: an added token is not {{id, content, ...}}: {token!r}")
            for option in ("lstrip", "rstrip", "single_word"):
                if token.get(option):
                    raise ValueError(f"{path}: added token {token['content']!r} sets {option}, which this engine's "
                                     f"tokenizer does not implement")
            added[token["content"]] = (token["id"], bool(token.get("special")))
        return added
    path = folder / "added_tokens.json"
    added = read_json(path)
    if added is None:
        return {}
    if not isinstance(added, dict) or not all(type(i) is int for i in added.values()):
        raise ValueError(f"{path} does not parse: expected a JSON object of token -> id")
    return {text: (i, True) for text, i in added.items()}


def check_tokenizer_json(path, tokenizer):
    """Refuse, naming the field, a tokenizer.json that splits or marks text otherwise than GPT-2's tokenizer."""
    if not isinstance(tokenizer, dict):
        raise ValueError(f"{path} does not parse: expected a JSON object")
    model, pre = tokenizer.get("model") or {}, tokenizer.get("pre_tokenizer") or {}
    post = tokenizer.get("post_processor") or {}
    problems = {
        "model.type": (model.get("type", "BPE"), "BPE"),
        "model.dropout": (model.get("dropout"), None),
        "model.byte_fallback": (bool(model.get("byte_fallback")), False),
        "model.ignore_merges": (bool(model.get("ignore_merges")), False),
        "model.continuing_subword_prefix": (model.get("continuing_subword_prefix") or "", ""),
        "model.end_of_word_suffix": (model.get("end_of_word_suffix") or "", ""),
        "normalizer": (tokenizer.get("normalizer"), None),
        "pre_tokenizer.type": (pre.get("type"), "ByteLevel"),
        "pre_tokenizer.add_prefix_space": (bool(pre.get("add_prefix_space")), False),
        "pre_tokenizer.use_regex": (pre.get("use_regex", True), True),
        "post_processor (tokens added to every text)": (
            "SpecialToken" in json.dumps(post.get("single")) if post.get("type") == "TemplateProcessing" else False, False),
    }
    for name, (value, wanted) in problems.items():
        if value != wanted:
            raise ValueError(f"{path}: {name} is {json.dumps(value)} where GPT-2's tokenizer has {json.dumps(wanted)}; "
                             f"this engine tokenizes as GPT-2 does only")


def check_tokenizer_config(path):
    """Refuse a tokenizer_config.json that asks for a prefix space or a BOS token before every text."""
    config = read_json(path) or {}
    for name in ("add_prefix_space", "add_bos_token"):
        if config.get(name):
            raise ValueError(f"{path}: {name} is true, which this engine's tokenizer does not do (GPT-2's does not)"
                             + ("; put <|endoftext|> at the prompt's start with allowed_special instead"
                                if name == "add_bos_token" else ""))


def read_json(path):
    """The JSON in path, None if there is no such file, or a ValueError naming it."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} does not parse: {e}") from None
