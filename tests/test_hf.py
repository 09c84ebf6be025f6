"""HuggingFace-format models: folders that transformers' save_pretrained writes, read by hf_checkpoint.py
(and pytorch_bin.py), checked against transformers itself on the same folder: logits and greedy ids.

The weights are random (conftest.random_params, peaked so that greedy picks are far from ties); float16 and
bfloat16 folders are compared with transformers loading the same folder upcast to float32.
"""
import json
import mmap
import shutil

import numpy as np
import pytest
import torch

import gpt2
import hf_checkpoint
import utils
from conftest import N_VOCAB, ROOT, random_params, write_hf_folder

TINY = dict(n_vocab=N_VOCAB, n_ctx=64, n_embd=64, n_head=4, n_layer=2)
PROMPTS = ["Alan Turing theorized that computers would one day become", "Hello", " 1 + 1 = 2, and 2 + 2 ="]
# name -> (hparams changes, random_params options, write_hf_folder options)
CASES = {
    "float32": ({}, {}, {}),
    "float16": ({}, {}, dict(dtype="float16")),
    "bfloat16": ({}, {}, dict(dtype="bfloat16")),
    "sharded": ({}, {}, dict(max_shard_size="200KB")),
    "sharded-bfloat16": ({}, {}, dict(dtype="bfloat16", max_shard_size="100KB")),
    "no-prefix": ({}, {}, dict(prefix=False)),
    "untied-lm_head": ({}, dict(lm_head=True), {}),
    "distilgpt2-shaped": (dict(n_layer=6, n_head=8), {}, {}),
    "n_inner": ({}, dict(n_inner=96), {}),
}


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """{case: (folder, hparams, params as written)} for every case in CASES."""
    out = {}
    for seed, (name, (changes, options, write)) in enumerate(CASES.items()):
        hparams = {**TINY, **changes}
        params = random_params(hparams, seed, **options)
        out[name] = (write_hf_folder(tmp_path_factory.mktemp(name), hparams, params, **write), hparams, params)
    return out


def hf_reference(folder):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # n_tokens exactly, as stop_at_eot=False gives
    model.generation_config.pad_token_id = 0
    return model


def is_mapped(array):
    """True when array is a view into a memory-mapped file (nothing of it copied)."""
    while array is not None:
        if isinstance(array, (np.memmap, mmap.mmap)):
            return True
        array = getattr(array, "base", None)
    return False


def leaves(params):
    for block in params["blocks"]:
        for group in block.values():
            yield from (v for sub in group.values() for v in (sub.values() if isinstance(sub, dict) else [sub]))
    yield from (params["wte"], params["wpe"], *params["ln_f"].values(), *([params["lm_head"]] if "lm_head" in params else []))


@pytest.mark.parametrize("case", CASES)
def test_logits_and_greedy_ids_equal_hf(folders, case):
    folder, hparams, written = folders[case]
    encoder, loaded, params = utils.load_model(str(folder))
    assert loaded == hparams and encoder.encode("hello world") == [31373, 995]
    assert all(a.dtype == np.float32 for a in leaves(params))
    assert ("lm_head" in params) == ("lm_head" in written)
    assert all(is_mapped(a) for a in leaves(params)) == (case in ("float32", "sharded", "no-prefix", "untied-lm_head",
                                                                  "distilgpt2-shaped", "n_inner"))
    model = hf_reference(folder)
    for prompt in PROMPTS:
        ids = encoder.encode(prompt)
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0].numpy()
            hf_ids = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
        np.testing.assert_allclose(gpt2.gpt2(ids, **params, n_head=hparams["n_head"]), expected, rtol=1e-4, atol=1e-4)
        assert gpt2.generate(ids, params, hparams["n_head"], n_tokens=12, stop_at_eot=False) == hf_ids


@pytest.mark.parametrize("case", ["float32", "float16", "bfloat16", "sharded-bfloat16", "untied-lm_head"])
def test_every_tensor_agrees_with_the_safetensors_package(folders, case):
    from safetensors import safe_open

    folder = folders[case][0]
    files = sorted(folder.glob("*.safetensors"))
    assert files and (len(files) > 1) == case.startswith("sharded")
    for path in files:
        ours = hf_checkpoint.read_safetensors(path)
        with safe_open(path, "pt") as f:
            assert sorted(ours) == sorted(f.keys())
            for name, (dtype, array) in ours.items():
                theirs = f.get_tensor(name)
                assert array.shape == tuple(theirs.shape)
                assert array.tobytes() == theirs.contiguous().view(torch.uint8).numpy().tobytes(), name
                upcast = hf_checkpoint.as_float32(path, name, dtype, array)
                np.testing.assert_array_equal(upcast, theirs.float().numpy())


def test_loaded_weights_are_the_written_ones(folders):
    folder, hparams, written = folders["untied-lm_head"]
    _, _, params = utils.load_model(str(folder))
    np.testing.assert_array_equal(params["lm_head"], written["lm_head"])
    np.testing.assert_array_equal(params["blocks"][1]["mlp"]["c_proj"]["w"], written["blocks"][1]["mlp"]["c_proj"]["w"])
    np.testing.assert_array_equal(params["blocks"][0]["ln_2"]["g"], written["blocks"][0]["ln_2"]["g"])


def copy_folder(folders, tmp_path, case="float32", **config_changes):
    """A copy of a case's folder whose config.json has the given changes (None removes a field)."""
    target = tmp_path / case
    shutil.copytree(folders[case][0], target)
    config = json.loads((target / "config.json").read_text())
    config.update(config_changes)
    (target / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return target


def test_an_untied_config_whose_lm_head_equals_wte_ties_it(folders, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = copy_folder(folders, tmp_path, "untied-lm_head")
    tensors = load_file(folder / "model.safetensors")
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
    save_file(tensors, folder / "model.safetensors")
    _, _, params = utils.load_model(str(folder))
    assert "lm_head" not in params  # the same numbers: wte serves, and is read once per token


def test_old_checkpoints_attention_buffers_are_ignored(folders, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = copy_folder(folders, tmp_path, "no-prefix")
    tensors = load_file(folder / "model.safetensors")
    n_ctx = TINY["n_ctx"]
    for i in range(TINY["n_layer"]):  # as HF's GPT2 saved them before they became non-persistent
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((n_ctx, n_ctx), np.uint8))[None, None]
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(tensors, folder / "model.safetensors")
    _, _, params = utils.load_model(str(folder))
    _, _, reference = utils.load_model(str(folders["no-prefix"][0]))
    ids = [464, 3290, 318]
    np.testing.assert_array_equal(gpt2.gpt2(ids, **params, n_head=4), gpt2.gpt2(ids, **reference, n_head=4))


@pytest.mark.parametrize("activation", hf_checkpoint.TANH_GELU)
def test_every_spelling_of_tanh_gelu_matches_hf(folders, tmp_path, activation):
    folder = copy_folder(folders, tmp_path, activation_function=activation, reorder_and_upcast_attn=True)
    encoder, hparams, params = utils.load_model(str(folder))
    ids = encoder.encode(PROMPTS[0])
    with torch.no_grad():
        expected = hf_reference(folder)(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(gpt2.gpt2(ids, **params, n_head=hparams["n_head"]), expected, rtol=1e-4, atol=1e-4)


def test_hf_aliases_of_config_fields(folders, tmp_path):
    folder = copy_folder(folders, tmp_path, n_embd=None, n_layer=None, hidden_size=64, num_hidden_layers=2)
    assert utils.load_model(str(folder))[1] == TINY


@pytest.mark.parametrize("changes, message", [
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon is 1e-06, which this engine does not run"),
    ({"activation_function": "gelu"}, "activation_function is 'gelu', which this engine does not run"),
    ({"activation_function": "relu"}, "activation_function is 'relu'"),
    ({"scale_attn_weights": False}, "scale_attn_weights is False"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx is True"),
    ({"add_cross_attention": True}, "add_cross_attention is True"),
    ({"model_type": "llama"}, "model_type is 'llama'; this engine runs GPT-2"),
    ({"architectures": ["LlamaForCausalLM"]}, "architectures names LlamaForCausalLM"),
    ({"n_embd": 48}, "tensor transformer.wte.weight has shape [50257, 64], but config.json implies [50257, 48]"),
    ({"n_layer": 3}, "lacks tensor h.2.ln_1.weight (or transformer.h.2.ln_1.weight), which config.json implies"),
    ({"n_layer": 1}, "tensor transformer.h.1.attn.c_attn.bias is not part of a GPT-2 of 1 layers"),
    ({"n_inner": 128}, "tensor transformer.h.0.mlp.c_fc.weight has shape [64, 256], but config.json implies [64, 128]"),
    ({"n_head": 5}, "n_embd (64) is not a multiple of n_head (5)"),
    ({"vocab_size": "many"}, "vocab_size should be a positive whole number, got 'many'"),
    ({"n_embd": 64, "hidden_size": 32}, "n_embd (64) and hidden_size (32) disagree"),
    ({"tie_word_embeddings": False}, "unties the unembedding (tie_word_embeddings false) but the weights hold no lm_head"),
])
def test_a_config_the_forward_pass_does_not_implement_is_refused(folders, tmp_path, changes, message):
    folder = copy_folder(folders, tmp_path, **changes)
    with pytest.raises(ValueError) as e:
        utils.load_model(str(folder))
    assert message in str(e.value) and str(folder) in str(e.value)


def test_other_dtypes_are_refused_naming_the_tensor(folders, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = copy_folder(folders, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"].astype(np.float64)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match="tensor transformer.wpe.weight is F64; this engine reads weights stored as F32"):
        utils.load_model(str(folder))


def test_keys_with_and_without_the_prefix_in_one_file_are_refused(folders, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = copy_folder(folders, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["wte.weight"] = tensors["transformer.wte.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match="holds both transformer.wte.weight and wte.weight"):
        utils.load_model(str(folder))


def test_a_shard_missing_or_misnamed(folders, tmp_path):
    folder = copy_folder(folders, tmp_path, "sharded")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["transformer.wpe.weight"]
    (folder / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"{shard} is missing, a shard that model.safetensors.index.json lists"):
        utils.load_model(str(folder))
    index["weight_map"]["transformer.wpe.weight"] = "../../elsewhere.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a file name beside the index"):
        utils.load_model(str(folder))


def craft(path, mutate=None, length=None, tail=b""):
    """Rewrite a safetensors file's header with mutate(header dict); `length` overrides the stated header size."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    if mutate:
        mutate(header)
    text = json.dumps(header).encode()
    path.write_bytes((len(text) if length is None else length).to_bytes(8, "little") + text + data[8 + size:] + tail)


def offsets(name, begin, end):
    return lambda header: header[name].update(data_offsets=[begin, end])


@pytest.mark.parametrize("mutate, length, tail, message", [
    (None, 10**6, b"", "the header is said to be 1,000,000 bytes, but the file holds"),
    (offsets("b", 24, 40), None, b"", "tensor b needs bytes 24 to 40 of the data, which has 32: the file is truncated"),
    (offsets("b", 16, 24), None, b"", "tensor b (bytes 16 to 24) overlaps the tensor before it"),
    (lambda h: h["b"].update(dtype="Q4"), None, b"", "tensor b has dtype 'Q4', which this reader does not know"),
    (lambda h: h["a"].update(shape=[2, 4]), None, b"", "tensor a has 24 bytes, but shape [2, 4] of F32 needs 32"),
    (lambda h: h["a"].update(shape=[2, -3]), None, b"", "tensor a has shape [2, -3], not a list of sizes"),
    (offsets("b", 26, 34), None, b"\0\0", "tensor b (bytes 26 to 34) leaves bytes 24 to 26 unused"),
    (None, None, b"\0\0\0\0", "the tensors end at byte 32 of 36 data bytes"),
    (lambda h: h.update(a=[0, 24]), None, b"", "header entry a is not {dtype, shape, data_offsets}"),
])
def test_a_header_that_does_not_describe_the_file_is_refused(tmp_path, mutate, length, tail, message):
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float16)}, path)
    assert sorted(hf_checkpoint.read_safetensors(path)) == ["a", "b"]
    craft(path, mutate, length, tail)
    with pytest.raises(ValueError) as e:
        hf_checkpoint.read_safetensors(path)
    assert str(path) in str(e.value) and message in str(e.value)
    with pytest.raises(SafetensorError):  # the safetensors package refuses each of these too
        safe_open(path, "np")


@pytest.mark.parametrize("content, message", [
    (b"", "is 0 bytes, too short for a safetensors header"),
    (b"\x05\0\0\0\0\0\0\0[1,2]", "the header is not a JSON object"),
    (b"\x05\0\0\0\0\0\0\0{1,2}", "the header is not JSON"),
])
def test_a_file_that_is_not_safetensors(tmp_path, content, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        hf_checkpoint.read_safetensors(path)


def run_cli(*args, tmp_path):
    import os
    import subprocess
    import sys

    from test_hub import closed_port_url

    env = {**os.environ, "HF_ENDPOINT": closed_port_url(), "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, str(ROOT / "gpt2.py"), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_the_cli_runs_a_folder(folders, tmp_path):
    folder, hparams, _ = folders["bfloat16"]
    result = run_cli("Alan Turing theorized", "--model", folder, "--n_tokens", 6, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    encoder, _, params = utils.load_model(str(folder))
    out = gpt2.generate(encoder.encode("Alan Turing theorized"), params, hparams["n_head"], n_tokens=6)
    assert result.stdout == encoder.decode(out) + "\n"


@pytest.mark.parametrize("make, message", [
    (lambda f: (f / "model.safetensors").unlink(), "holds no weights: expected one of model.safetensors, "),
    (lambda f: (f / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}'),
     "config.json: model_type is 'llama'; this engine runs GPT-2 (model_type gpt2) only"),
    (lambda f: [(f / name).unlink() for name in ("vocab.json", "merges.txt")], "has no tokenizer: put GPT-2's vocab.json"),
    (lambda f: (f / "config.json").write_text('{"n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 64, "layer_'
                                              'norm_epsilon": 1e-6}'), "layer_norm_epsilon is 1e-06"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 5), "is 5 bytes, too short for a safetensors header"),
    (None, "give --model or --model_size, not both"),
    (lambda f: None, "is neither a GPT-2 size (124M, 355M, 774M, 1558M), nor a folder, nor a HuggingFace hub id"),
])
def test_cli_bad_input_is_one_line(folders, tmp_path, make, message):
    folder = copy_folder(folders, tmp_path)
    args = ["--model", folder]
    if make is None:
        args += ["--model_size", "124M"]
    elif "neither" in message:
        args = ["--model", "not a model!"]
    else:
        make(folder)
    result = run_cli("hello", *args, tmp_path=tmp_path)
    assert result.returncode != 0 and result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1], result.stderr
    assert len(lines) == 1 or lines[0].startswith("usage:")  # argparse's usage errors come after the usage


def test_verify_refuses_a_hub_id_before_fetching_it(tmp_path):
    result = run_cli("--verify", "--model", "someone/some-finetune", tmp_path=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "gpt2.py: error: --verify checks the crc32c of every tensor of a TensorFlow checkpoint, and "
        "someone/some-finetune is not one (no someone/some-finetune/checkpoint); HuggingFace's files carry no such "
        "checksums"]
    assert not (tmp_path / "hf-cache").exists()  # nothing was fetched, nor tried
