"""Shared test fixtures: random-weight GPT-2 checkpoints written in OpenAI's exact layout.

`write_checkpoint` makes `<models_dir>/<model_size>/` hold the seven files OpenAI publishes
(checkpoint, hparams.json, model.ckpt.{index,data-00000-of-00001,meta}, encoder.json, vocab.bpe),
written by TensorFlow's own TF1 Saver, and returns the weights it wrote as numpy arrays, so the
tests can load an independent reference (HuggingFace transformers) from the same numbers.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before any test imports TensorFlow

ROOT = Path(__file__).resolve().parent.parent
VOCAB_DIR = ROOT / "vocab"
N_VOCAB = 50257

# Two shapes: a power-of-two one, and one where n_embd is not a power of two and n_head != n_layer.
SHAPES = {
    "tiny": dict(n_vocab=N_VOCAB, n_ctx=128, n_embd=64, n_head=4, n_layer=2),
    "odd": dict(n_vocab=N_VOCAB, n_ctx=96, n_embd=48, n_head=3, n_layer=5),
}


def random_params(hparams, seed=0, n_inner=None, lm_head=False):
    """Random weights keyed like our params dict (conv weights already squeezed to [nx, nf]).

    The scales are chosen so next-token distributions are peaked (greedy picks are decided by
    margins far above float32 rounding) and attention is far from uniform. `n_inner` is the MLP's
    width (GPT-2's 4 * n_embd if None); `lm_head` adds an unembedding untied from wte.
    """
    rng = np.random.default_rng(seed)
    n_embd, n_ctx, n_vocab = hparams["n_embd"], hparams["n_ctx"], hparams["n_vocab"]
    n_inner = n_inner or 4 * n_embd

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def ln(gain):
        return {"g": gain + normal([n_embd], 0.1), "b": normal([n_embd], 0.1)}

    def conv(nx, nf, scale=1.0):
        return {"w": normal([nx, nf], scale / np.sqrt(nx)), "b": normal([nf], 0.1)}

    blocks = [
        {
            "ln_1": ln(1.0),
            "attn": {"c_attn": conv(n_embd, 3 * n_embd, 1.5), "c_proj": conv(n_embd, n_embd)},
            "ln_2": ln(1.0),
            "mlp": {"c_fc": conv(n_embd, n_inner), "c_proj": conv(n_inner, n_embd)},
        }
        for _ in range(hparams["n_layer"])
    ]
    params = {
        "wte": normal([n_vocab, n_embd], 0.5),
        "wpe": normal([n_ctx, n_embd], 0.2),
        "blocks": blocks,
        "ln_f": ln(3.0),
    }
    if lm_head:
        params["lm_head"] = normal([n_vocab, n_embd], 0.5)
    return params


def tf_variables(params):
    """Our params dict -> {TF1 variable name: array}, conv weights as [1, nx, nf] like OpenAI's."""
    out = {"model/wte": params["wte"], "model/wpe": params["wpe"]}
    for key in ("g", "b"):
        out[f"model/ln_f/{key}"] = params["ln_f"][key]
    for i, block in enumerate(params["blocks"]):
        for path, value in _walk(block):
            if path.endswith("/w"):
                value = value[None]
            out[f"model/h{i}/{path}"] = value
    return out


def _walk(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def write_checkpoint(models_dir, model_size, hparams, params, global_step=None):
    """Write OpenAI's seven files for `params` into models_dir/model_size with TF1's Saver.

    With a global_step the checkpoint is `model-<global_step>`, as gpt-2-simple saves its fine-tunes.
    """
    import tensorflow as tf

    model_dir = Path(models_dir) / model_size
    model_dir.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        # Values go in through placeholders, so the .meta graph stays small as OpenAI's is
        # (an initializer=value would store every weight a second time, as a constant in the graph).
        feeds, assigns = {}, []
        for name, value in tf_variables(params).items():
            var = tf.compat.v1.get_variable(name, shape=value.shape, dtype=tf.float32)
            placeholder = tf.compat.v1.placeholder(tf.float32, shape=value.shape)
            feeds[placeholder] = value
            assigns.append(var.assign(placeholder))
        saver = tf.compat.v1.train.Saver(save_relative_paths=True)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(assigns, feed_dict=feeds)
            if global_step is None:
                saver.save(sess, str(model_dir / "model.ckpt"))
            else:
                saver.save(sess, str(model_dir / "model"), global_step=global_step)
    (model_dir / "hparams.json").write_text(json.dumps(hparams, indent=2))
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(VOCAB_DIR / name, model_dir / name)
    return model_dir


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{shape name: (models_dir, model_size, hparams, params)} for every shape in SHAPES."""
    out = {}
    for i, (name, hparams) in enumerate(SHAPES.items()):
        models_dir = tmp_path_factory.mktemp(f"models_{name}")
        params = random_params(hparams, seed=i)
        write_checkpoint(models_dir, "124M", hparams, params)
        out[name] = (models_dir, "124M", hparams, params)
    return out


NEWLINE = 198  # "\n"


@pytest.fixture(scope="session")
def newline_model(tmp_path_factory):
    """models_dir of a tiny model whose greedy continuation of "Q: What is 2+2?\nA:" is a few tokens, then newlines.

    Random weights rarely pick "\n"; shifting ln_f's bias towards wte["\n"] raises its logit everywhere, and at
    this strength (found by trying) it wins from the fifth step on. Tests that rely on it check that it does.
    """
    hparams = SHAPES["tiny"]
    params = random_params(hparams, seed=0)
    toward_newline = params["wte"][NEWLINE] / np.linalg.norm(params["wte"][NEWLINE])
    params["ln_f"]["b"] = (params["ln_f"]["b"] + 21.5 * toward_newline).astype(np.float32)
    models_dir = tmp_path_factory.mktemp("models_newline")
    write_checkpoint(models_dir, "124M", hparams, params)
    return models_dir


def hf_model(hparams, params, **config):
    """HuggingFace GPT2LMHeadModel (PyTorch, CPU, eval mode) holding exactly `params`.

    `config` overrides GPT2Config's fields; an "lm_head" in params unties the unembedding.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**{
        "vocab_size": hparams["n_vocab"], "n_positions": hparams["n_ctx"], "n_embd": hparams["n_embd"],
        "n_layer": hparams["n_layer"], "n_head": hparams["n_head"], "activation_function": "gelu_new",
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-5,
        "n_inner": params["blocks"][0]["mlp"]["c_fc"]["b"].shape[0], "tie_word_embeddings": "lm_head" not in params,
        **config,
    })
    model = GPT2LMHeadModel(config).eval()
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = N_VOCAB - 1  # <|endoftext|>
    state = {"transformer.wte.weight": params["wte"], "transformer.wpe.weight": params["wpe"],
             "transformer.ln_f.weight": params["ln_f"]["g"], "transformer.ln_f.bias": params["ln_f"]["b"]}
    for i, block in enumerate(params["blocks"]):
        for path, value in _walk(block):
            *scope, leaf = path.split("/")
            leaf = {"g": "weight", "w": "weight", "b": "bias"}[leaf]
            state[".".join([f"transformer.h.{i}", *scope, leaf])] = value
    if "lm_head" in params:
        state["lm_head.weight"] = params["lm_head"]
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    # lm_head is tied to wte unless params unties it; HF may also keep non-persistent attention buffers.
    assert all(k == "lm_head.weight" or "attn.bias" in k or "masked_bias" in k for k in missing), missing
    tied = model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert tied == ("lm_head" not in params)
    return model


def write_hf_folder(folder, hparams, params, dtype="float32", max_shard_size=None, prefix=True, vocab=True, **config):
    """A model folder as transformers' save_pretrained writes it, holding `params` stored as `dtype`.

    `max_shard_size` ("200KB") shards the weights; prefix=False saves GPT2Model (keys without
    `transformer.`); vocab copies GPT-2's vocab.json and merges.txt beside it; `config` as for hf_model.
    """
    import torch

    model = hf_model(hparams, params, **config).to(getattr(torch, dtype))
    (model if prefix else model.transformer).save_pretrained(folder, max_shard_size=max_shard_size or "5GB")
    if vocab:
        shutil.copyfile(VOCAB_DIR / "encoder.json", Path(folder) / "vocab.json")
        shutil.copyfile(VOCAB_DIR / "vocab.bpe", Path(folder) / "merges.txt")
    return Path(folder)
