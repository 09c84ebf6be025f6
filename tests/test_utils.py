"""Loading checkpoints into params and checking them against hparams.json (downloads: test_download.py)."""
import json
import shutil

import numpy as np
import pytest

import gpt2
import utils
from conftest import SHAPES, hf_model, random_params, write_checkpoint


@pytest.fixture
def tiny(checkpoints):
    models_dir, model_size, hparams, written = checkpoints["tiny"]
    return models_dir / model_size, hparams, written


def test_params_are_keyed_like_the_checkpoint(tiny):
    model_dir, hparams, written = tiny
    params = utils.load_gpt2_params_from_tf_ckpt(utils.checkpoint_prefix(model_dir), hparams)
    assert sorted(params) == ["blocks", "ln_f", "wpe", "wte"]
    assert len(params["blocks"]) == hparams["n_layer"]
    block = params["blocks"][1]
    assert block["attn"]["c_attn"]["w"].shape == (hparams["n_embd"], 3 * hparams["n_embd"])
    np.testing.assert_array_equal(block["mlp"]["c_proj"]["w"], written["blocks"][1]["mlp"]["c_proj"]["w"])
    np.testing.assert_array_equal(params["wte"], written["wte"])
    leaves = [params["wte"], params["wpe"], *params["ln_f"].values()]
    for b in params["blocks"]:
        leaves += [b["ln_1"]["g"], b["ln_2"]["b"], *b["attn"]["c_proj"].values(), *b["mlp"]["c_fc"].values()]
    assert all(a.dtype == np.float32 for a in leaves)


def test_load_encoder_hparams_and_params(tiny):
    model_dir, hparams, _ = tiny
    encoder, loaded_hparams, params = utils.load_encoder_hparams_and_params("124M", model_dir.parent)
    assert loaded_hparams == hparams
    assert encoder.encode("hello world") == [31373, 995]
    assert params["wpe"].shape == (hparams["n_ctx"], hparams["n_embd"])


def copy_model(model_dir, tmp_path, **hparams_changes):
    """A copy of the model folder whose hparams.json has the given changes."""
    target = tmp_path / "124M"
    shutil.copytree(model_dir, target)
    hparams = json.loads((target / "hparams.json").read_text())
    (target / "hparams.json").write_text(json.dumps({**hparams, **hparams_changes}))
    return target


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_embd": 32, "n_head": 4}, "tensor model/wte has shape [50257, 64], but hparams.json implies [50257, 32]"),
        ({"n_ctx": 64}, "tensor model/wpe has shape [128, 64], but hparams.json implies [64, 64]"),
        ({"n_layer": 3}, "lacks 12 tensors that hparams.json implies, first model/h2/ln_1/g"),
        ({"n_head": 5}, "n_embd (64) is not a multiple of n_head (5)"),
        ({"n_vocab": "many"}, "n_vocab should be a positive whole number, got 'many'"),
    ],
)
def test_checkpoint_that_does_not_fit_hparams(tiny, tmp_path, changes, message):
    copy_model(tiny[0], tmp_path, **changes)
    with pytest.raises(ValueError) as e:
        utils.load_encoder_hparams_and_params("124M", tmp_path)
    assert message in str(e.value)


def test_unknown_model_size(tmp_path):
    with pytest.raises(ValueError, match="unknown model size '7B': choose one of 124M, 355M, 774M, 1558M"):
        utils.load_encoder_hparams_and_params("7B", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_gpt_2_simple_fine_tune_loads_the_checkpoint_it_names(tmp_path):
    # gpt-2-simple saves checkpoint/run1/model-<step> with OpenAI's variable names, and `checkpoint` names the last.
    import torch

    hparams = SHAPES["tiny"]
    older, newer = random_params(hparams, seed=10), random_params(hparams, seed=11)
    write_checkpoint(tmp_path, "run1", hparams, older, global_step=500)
    run = write_checkpoint(tmp_path, "run1", hparams, newer, global_step=1000)
    assert 'model_checkpoint_path: "model-1000"' in (run / "checkpoint").read_text()
    encoder, loaded, params = utils.load_model(str(run))
    assert loaded == hparams
    ids = encoder.encode("Alan Turing theorized")
    with torch.no_grad():
        expected = hf_model(hparams, newer)(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(gpt2.gpt2(ids, **params, n_head=hparams["n_head"]), expected, rtol=1e-4, atol=1e-4)
    (run / "checkpoint").write_text('model_checkpoint_path: "model-500"\n')
    np.testing.assert_array_equal(utils.load_model(str(run))[2]["wte"], older["wte"])


def test_a_folder_that_holds_no_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no model: expected config.json beside model.safetensors"):
        utils.load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is neither a GPT-2 size .*, nor a folder, nor a HuggingFace hub id"):
        utils.load_model(str(tmp_path / "no such folder"))
