"""A model folder's own tokenizer (hf_tokenizer.py, encoder.build_encoder) against HuggingFace's tokenizer
reading the same files: a fine-tune's added tokens, a vocab trained from scratch with another size and
numbering, and the settings that must be refused."""
import json
import shutil

import numpy as np
import pytest
import torch

import encoder
import gpt2
import hf_tokenizer
import utils
from conftest import VOCAB_DIR, random_params, write_hf_folder
from test_hf import TINY, hf_reference

TEXTS = [
    "Hello world! It's 2024, and GPT-2 still tokenizes   spaces\tand\nnewlines.",
    "naïve café, 東京タワー, emoji 🤖👍🏽 and Ünïcödé; DON'T they'll we've",
    "def f(x):\n    return x**2  # squares\n\n\n",
    "1234567890 3.14159 -42 +7e10 1,000,000",
    " leading space, trailing space ",
]
CORPUS = [text * 3 for text in TEXTS] + ["the quick brown fox jumps over the lazy dog " * 20]


def gpt2_vocab_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(VOCAB_DIR / "encoder.json", folder / "vocab.json")
    shutil.copyfile(VOCAB_DIR / "vocab.bpe", folder / "merges.txt")
    return folder


def hf_tokenizer_of(folder):
    from transformers import GPT2Tokenizer

    return GPT2Tokenizer.from_pretrained(folder)


def test_gpt2s_own_files_give_the_shipped_tokenizer(tmp_path):
    enc = hf_tokenizer.load_hf_encoder(gpt2_vocab_files(tmp_path))
    shipped = encoder.get_encoder()
    assert enc.ranks == shipped.ranks and enc.special_tokens == shipped.special_tokens == {"<|endoftext|>": 50256}
    assert enc.encode("hello world") == [31373, 995]


@pytest.fixture(scope="module")
def added(tmp_path_factory):
    """GPT-2's vocab with two plain added tokens and a special one, as transformers 5 saves it (tokenizer.json only)."""
    from transformers import GPT2Tokenizer

    folder = tmp_path_factory.mktemp("added")
    tokenizer = GPT2Tokenizer.from_pretrained(gpt2_vocab_files(tmp_path_factory.mktemp("base")))
    tokenizer.add_tokens(["<|pad|>", " hello world"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>"]})
    tokenizer.save_pretrained(folder)
    assert not (folder / "vocab.json").exists()
    return folder, tokenizer


def test_added_tokens_from_tokenizer_json(added):
    folder, hf = added
    enc = hf_tokenizer.load_hf_encoder(folder)
    assert enc.n_vocab == len(hf) == 50260
    for text in TEXTS + ["say hello world<|pad|>now", "<|user|> hi <|endoftext|> x <|pad|>"]:
        assert enc.encode(text) == hf(text, split_special_tokens=True)["input_ids"], text  # special ones as text
        assert enc.encode(text, allowed_special="all") == hf(text)["input_ids"], text
        assert enc.decode(enc.encode(text)) == text
    assert enc.encode(" hello world") == [50258] and enc.decode([50257, 50259]) == "<|pad|><|user|>"


def test_a_model_with_added_tokens_matches_hf(added, tmp_path):
    folder, hf = added
    hparams = {**TINY, "n_vocab": 50260}
    write_hf_folder(tmp_path, hparams, random_params(hparams, 3), vocab=False)
    for path in folder.iterdir():
        shutil.copyfile(path, tmp_path / path.name)
    enc, _, params = utils.load_model(str(tmp_path))
    ids = enc.encode("a<|pad|> hello world", allowed_special="all")
    assert ids == [64, 50257, 50258]
    with torch.no_grad():
        expected = hf_reference(tmp_path)(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(gpt2.gpt2(ids, **params, n_head=4), expected, rtol=1e-4, atol=1e-4)


def test_added_tokens_json_entries_are_special(tmp_path):
    folder = gpt2_vocab_files(tmp_path)
    (folder / "added_tokens.json").write_text(json.dumps({"<|pad|>": 50257}))
    enc = hf_tokenizer.load_hf_encoder(folder)
    assert enc.n_vocab == 50258 and enc.special_tokens == {"<|endoftext|>": 50256, "<|pad|>": 50257}
    assert enc.encode("<|pad|>", allowed_special="all") == [50257] and len(enc.encode("<|pad|>")) > 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A byte-level BPE of 400 tokens trained from scratch: <|endoftext|> is id 0, the bytes 1..256."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    folder = tmp_path_factory.mktemp("trained")
    tokenizer.save_model(str(folder))
    assert json.loads((folder / "vocab.json").read_text())["<|endoftext|>"] == 0
    return folder


@pytest.mark.parametrize("shuffle", [False, True], ids=["as-trained", "ids-shuffled"])
def test_a_vocab_trained_from_scratch_matches_hf(trained, tmp_path, shuffle):
    if shuffle:  # ids in no relation to the merges' order: HF ranks merges by their line in merges.txt
        shutil.copytree(trained, tmp_path / "shuffled")
        trained, vocab = tmp_path / "shuffled", json.loads((trained / "vocab.json").read_text())
        order = np.random.default_rng(0).permutation(len(vocab))
        (trained / "vocab.json").write_text(json.dumps({token: int(order[i]) for token, i in vocab.items()}))
    enc, hf = hf_tokenizer.load_hf_encoder(trained), hf_tokenizer_of(trained)
    assert enc.n_vocab == len(hf) == 400 and enc.ranks is not enc.ids
    for text in TEXTS + CORPUS + ["unseen wörds: zyxw QQQ", "🤖" * 5]:
        assert enc.encode(text) == hf(text)["input_ids"], text
        assert enc.decode(enc.encode(text)) == text


def test_a_model_with_a_vocab_of_400_matches_hf(trained, tmp_path):
    hparams = {**TINY, "n_vocab": 400}
    write_hf_folder(tmp_path, hparams, random_params(hparams, 4), vocab=False)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(trained / name, tmp_path / name)
    enc, _, params = utils.load_model(str(tmp_path))
    ids = enc.encode(TEXTS[0])
    model = hf_reference(tmp_path)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
        hf_ids = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)[0, len(ids):].tolist()
    np.testing.assert_allclose(gpt2.gpt2(ids, **params, n_head=4), expected, rtol=1e-4, atol=1e-4)
    assert gpt2.generate(ids, params, 4, n_tokens=10, stop_at_eot=False) == hf_ids


def test_a_tokenizer_larger_than_the_model_is_refused(trained, tmp_path):
    hparams = {**TINY, "n_vocab": 300}
    write_hf_folder(tmp_path, hparams, random_params(hparams, 4), vocab=False)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(trained / name, tmp_path / name)
    with pytest.raises(ValueError, match="the tokenizer has 400 tokens but the model only 300 \\(n_vocab\\)"):
        utils.load_model(str(tmp_path))


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("file, edit, message", [
    ("tokenizer.json", lambda t: t["pre_tokenizer"].update(add_prefix_space=True),
     "pre_tokenizer.add_prefix_space is true where GPT-2's tokenizer has false"),
    ("tokenizer.json", lambda t: t.update(normalizer={"type": "NFC"}), "normalizer is {\"type\": \"NFC\"}"),
    ("tokenizer.json", lambda t: t["model"].update(type="WordPiece"), "model.type is \"WordPiece\""),
    ("tokenizer.json", lambda t: t["added_tokens"][1].update(lstrip=True), "added token '<|pad|>' sets lstrip"),
    ("tokenizer_config.json", lambda c: c.update(add_bos_token=True), "add_bos_token is true"),
    ("tokenizer.json", lambda t: t["model"]["merges"].__setitem__(5, ["Ġ", "zzzz"]),
     "merge 6 (Ġ zzzz) joins or makes a token that is not in the vocab"),
])
def test_tokenizer_settings_gpt2_does_not_have_are_refused(added, tmp_path, file, edit, message):
    folder = tmp_path / "tokenizer"
    shutil.copytree(added[0], folder)
    edit_json(folder / file, edit)
    with pytest.raises(ValueError) as e:
        hf_tokenizer.load_hf_encoder(folder)
    assert str(folder / file) in str(e.value) and message in str(e.value)


def test_a_folder_without_a_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no tokenizer: put GPT-2's vocab.json and merges.txt"):
        hf_tokenizer.load_hf_encoder(tmp_path)


@pytest.fixture(scope="module")
def small_vocab_model(trained, tmp_path_factory):
    """A 400-token model folder whose tokenizer puts <|endoftext|> at id 0: GPT-2's 50256 is not in it."""
    folder = tmp_path_factory.mktemp("vocab400")
    hparams = {**TINY, "n_vocab": 400}
    write_hf_folder(folder, hparams, random_params(hparams, 4), vocab=False)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(trained / name, folder / name)
    return folder


def hf_generate(model, ids, eos, **kwargs):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, eos_token_id=eos, pad_token_id=eos, **kwargs)
    return out[0, len(ids):].tolist()


def test_the_end_token_of_a_vocab_without_50256(small_vocab_model):
    enc, _, params = utils.load_model(str(small_vocab_model))
    ids, model = enc.encode(TEXTS[0]), hf_reference(small_vocab_model)
    assert enc.eot_token == 0
    with pytest.raises(ValueError, match="min_new_tokens keeps the end token away, but this model has none: its "
                                         "vocabulary of 400 has no <|endoftext|> at 50256; give eos_token_id"):
        gpt2.generate(ids, params, 4, n_tokens=10, min_new_tokens=3)
    with pytest.raises(ValueError, match=r"eos_token_id must be a token id in \[0, 400\)"):
        gpt2.generate(ids, params, 4, n_tokens=10, eos_token_id=50256)
    free = gpt2.generate(ids, params, 4, n_tokens=12)  # no end token: 12 tokens, whatever they are
    assert len(free) == 12 and free == hf_generate(model, ids, None, max_new_tokens=12)
    eos = next(t for k, t in enumerate(free) if k >= 1 and t not in free[:k])  # a token greedy reaches at step k
    stop = free.index(eos)
    assert gpt2.generate(ids, params, 4, n_tokens=12, eos_token_id=eos) == free[: stop + 1]
    for kwargs in [dict(min_new_tokens=stop + 2), dict(num_beams=3), dict(num_beams=3, min_new_tokens=stop + 2),
                   dict(no_repeat_ngram_size=2, min_new_tokens=2)]:
        ours = gpt2.generate(ids, params, 4, n_tokens=12, eos_token_id=eos, **kwargs)
        assert ours == hf_generate(model, ids, eos, max_new_tokens=12, **kwargs), kwargs
    assert eos not in gpt2.generate(ids, params, 4, n_tokens=12, eos_token_id=eos, min_new_tokens=12)


def test_the_cli_ends_at_the_tokenizers_own_end_token(small_vocab_model, tmp_path):
    from test_hf import run_cli

    enc, _, params = utils.load_model(str(small_vocab_model))
    prompt = TEXTS[0]
    result = run_cli(prompt, "--model", small_vocab_model, "--n_tokens", 12, "--min_new_tokens", 3, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    out = hf_generate(hf_reference(small_vocab_model), enc.encode(prompt), 0, max_new_tokens=12, min_new_tokens=3)
    shown = out[: out.index(0)] if 0 in out else out  # the text ends at <|endoftext|>, id 0 here, unshown
    assert result.stdout == enc.decode(shown) + "\n"
    inspected = run_cli(prompt, "--model", small_vocab_model, "--inspect", "--prepend_eot", tmp_path=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert "0  '<|endoftext|>'" in inspected.stdout  # the tokenizer's own, id 0, not GPT-2's 50256
