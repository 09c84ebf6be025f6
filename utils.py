"""Load GPT-2 models into nested dicts of float32 arrays, downloading them first if need be.

load_model takes any of three things:
- a GPT-2 size: `<models_dir>/<model_size>/` holds the seven files OpenAI publishes for it (download.py
  fetches them). The weights are read by our own reader (checkpoint.py), without TensorFlow, as read-only
  views into a memory map of the data file, and every shape is checked against hparams.json before use;
- a folder: OpenAI's layout as above (gpt-2-simple's fine-tunes too: `checkpoint` names their `model-N`),
  or HuggingFace's (config.json and safetensors or pytorch_model.bin weights: hf_checkpoint.py, with the
  folder's tokenizer: hf_tokenizer.py);
- a HuggingFace hub id, found in the local HuggingFace cache or fetched into it (hub.py).

As a command, for fetching a model before going offline or checking one:
    python utils.py download --model_size 124M [--models_dir models] [--base_url URL]
    python utils.py verify --model_size 124M [--models_dir models]
"""
import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

import checkpoint
import encoder as bpe
import hf_checkpoint
import hf_tokenizer
import hub
from openai_files import BASE_URL, FILENAMES, download_gpt2_files, model_is_present, verify_checkpoint
from encoder import MODEL_SIZES, check_model_size

HPARAMS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")


def load_hparams(path):
    """hparams.json -> {"n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"}, each a positive int."""
    try:
        hparams = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read as JSON ({e}): delete the model folder and download it again")
    if not isinstance(hparams, dict):
        raise ValueError(f"{path} should hold a JSON object with {', '.join(HPARAMS)}")
    for key in HPARAMS:
        value = hparams.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {key} should be a positive whole number, got {value!r}")
    if hparams["n_embd"] % hparams["n_head"]:
        raise ValueError(f"{path}: n_embd ({hparams['n_embd']}) is not a multiple of n_head ({hparams['n_head']})")
    return hparams


def checkpoint_shapes(hparams):
    """The TF variables OpenAI's checkpoint holds for these hparams: {name: shape}.

    {"n_embd": 768, "n_layer": 12, ...} -> {"model/wte": (50257, 768), ...,
    "model/h0/attn/c_attn/w": (1, 768, 2304), ...}; conv weights keep TF's leading 1.
    """
    n_vocab, n_ctx, n_embd = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"]
    block = {
        "ln_1/g": (n_embd,), "ln_1/b": (n_embd,),
        "attn/c_attn/w": (1, n_embd, 3 * n_embd), "attn/c_attn/b": (3 * n_embd,),
        "attn/c_proj/w": (1, n_embd, n_embd), "attn/c_proj/b": (n_embd,),
        "ln_2/g": (n_embd,), "ln_2/b": (n_embd,),
        "mlp/c_fc/w": (1, n_embd, 4 * n_embd), "mlp/c_fc/b": (4 * n_embd,),
        "mlp/c_proj/w": (1, 4 * n_embd, n_embd), "mlp/c_proj/b": (n_embd,),
    }
    shapes = {"model/wte": (n_vocab, n_embd), "model/wpe": (n_ctx, n_embd), "model/ln_f/g": (n_embd,), "model/ln_f/b": (n_embd,)}
    for i in range(hparams["n_layer"]):
        shapes.update({f"model/h{i}/{name}": shape for name, shape in block.items()})
    return shapes


def load_gpt2_params_from_tf_ckpt(ckpt_path, hparams):
    """Checkpoint prefix -> {"wte", "wpe", "ln_f": {g, b}, "blocks": [{ln_1, attn, ln_2, mlp}, ...]}.

    Arrays are read-only float32 views into the memory-mapped data file: nothing is copied.
    """
    tensors = checkpoint.read_tensors(ckpt_path)
    shapes = checkpoint_shapes(hparams)
    missing = [name for name in shapes if name not in tensors]
    if missing:
        raise ValueError(f"{ckpt_path} lacks {len(missing)} tensors that hparams.json implies, first {missing[0]}")
    params = {"blocks": [{} for _ in range(hparams["n_layer"])]}
    for name, shape in shapes.items():
        array = tensors[name]
        if array.dtype != np.float32:
            raise ValueError(f"{ckpt_path}: tensor {name} is {array.dtype}, but GPT-2's weights are float32")
        if array.shape != shape:
            raise ValueError(
                f"{ckpt_path}: tensor {name} has shape {list(array.shape)}, but hparams.json implies {list(shape)}"
            )
        *scope, leaf = name.removeprefix("model/").split("/")
        node = params
        if scope and re.fullmatch(r"h\d+", scope[0]):
            node = params["blocks"][int(scope.pop(0)[1:])]
        for key in scope:
            node = node.setdefault(key, {})
        node[leaf] = array.reshape(shape[1:]) if len(shape) == 3 else array  # [1, nx, nf] -> [nx, nf], a view
    return params


def checkpoint_prefix(model_dir):
    """The prefix named by model_dir/checkpoint ("model.ckpt" in OpenAI's files, "model-1000" in
    gpt-2-simple's), as a path in model_dir."""
    try:
        text = (Path(model_dir) / "checkpoint").read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{model_dir} has no `checkpoint` file naming its TensorFlow checkpoint") from None
    match = re.search(r'^model_checkpoint_path: "(.*)"', text, re.M)
    if not match:
        raise ValueError(f"{model_dir}/checkpoint does not name a model_checkpoint_path")
    return str(Path(model_dir) / Path(match.group(1)).name)


def load_encoder_hparams_and_params(model_size, models_dir):
    """(encoder, hparams, params) for a GPT-2 size, downloading its files first if any is missing."""
    check_model_size(model_size)
    model_dir = Path(models_dir) / model_size
    if not model_is_present(model_dir):
        download_gpt2_files(model_size, model_dir, check=check_shapes)
    return (bpe.get_encoder(model_size, models_dir), *load_hparams_and_params(model_dir))


def load_model(model="124M", models_dir="models", quiet=False):
    """(encoder, hparams, params) for a GPT-2 size, a model folder, or a HuggingFace hub id.

    "124M" (or 355M, 774M, 1558M) is OpenAI's checkpoint in models_dir, downloaded if missing. Otherwise a
    folder that exists is read as a folder (HuggingFace's layout or OpenAI's), and anything else is taken for
    a hub id ("distilgpt2", "openai-community/gpt2-medium@main"), looked up in the HuggingFace cache and
    fetched into it if missing. `quiet` turns off progress bars and notes on stderr.
    """
    if model in MODEL_SIZES:
        return load_encoder_hparams_and_params(model, models_dir)
    if Path(model).is_dir():
        return load_folder(model)
    if hub.parse_hub_id(model) is None:
        raise FileNotFoundError(f"{model!r} is neither a GPT-2 size ({', '.join(MODEL_SIZES)}), nor a folder, nor "
                                f"a HuggingFace hub id (name or org/name, optionally @revision)")
    try:
        snapshot = hub.model_snapshot(model, quiet)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"there is no folder {model!r}, and as a hub id: {e}") from None
    return load_folder(snapshot)


def load_folder(folder):
    """(encoder, hparams, params) of a model folder in HuggingFace's layout or OpenAI's."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        encoder = hf_tokenizer.load_hf_encoder(folder)
        hparams, params = hf_checkpoint.load_hf_model(folder)
    elif (folder / "checkpoint").is_file() or (folder / "hparams.json").is_file():
        hparams, params = load_hparams_and_params(folder)
        vocab = folder / "encoder.json", folder / "vocab.bpe"
        encoder = bpe.load_encoder(*vocab, check_hashes=False) if all(p.is_file() for p in vocab) else bpe.get_encoder()
    else:
        raise FileNotFoundError(f"{folder} holds no model: expected config.json beside model.safetensors or "
                                f"pytorch_model.bin (HuggingFace), or checkpoint and hparams.json (OpenAI, gpt-2-simple)")
    if encoder.n_vocab > hparams["n_vocab"]:
        raise ValueError(f"{folder}: the tokenizer has {encoder.n_vocab:,} tokens but the model only "
                         f"{hparams['n_vocab']:,} (n_vocab): the tokenizer files do not belong to these weights")
    return encoder, hparams, params


def tf_model_dir(model, models_dir="models"):
    """The folder of a model in OpenAI's layout (a size or a folder), whose checkpoint verify_model can check."""
    model_dir = Path(models_dir) / model if model in MODEL_SIZES else Path(model)
    if not (model_dir / "checkpoint").is_file():
        raise ValueError(f"--verify checks the crc32c of every tensor of a TensorFlow checkpoint, and {model} is not "
                         f"one (no {model_dir / 'checkpoint'}); HuggingFace's files carry no such checksums")
    return model_dir


def load_hparams_and_params(model_dir):
    """(hparams, params) of a model folder, every tensor's shape checked against its hparams.json."""
    hparams = load_hparams(Path(model_dir) / "hparams.json")
    return hparams, load_gpt2_params_from_tf_ckpt(checkpoint_prefix(model_dir), hparams)


def check_shapes(prefix):
    """Every tensor of the checkpoint at prefix against the hparams.json beside it: a ValueError naming the first misfit."""
    load_gpt2_params_from_tf_ckpt(prefix, load_hparams(Path(prefix).parent / "hparams.json"))


def verify_model(model_dir, quiet=False):
    """Check a present model: every tensor against its crc32c, every shape against hparams.json.

    Returns the number of tensor bytes checked.
    """
    model_dir = Path(model_dir)
    missing = [name for name in FILENAMES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir} lacks {', '.join(missing)}: `python utils.py download --model_size {model_dir.name} "
            f"--models_dir {model_dir.parent}` fetches them"
        )
    checked = verify_checkpoint(checkpoint_prefix(model_dir), quiet)
    load_hparams_and_params(model_dir)
    return checked


def main(argv=None):
    """`python utils.py download|verify ...`: fetch a model before going offline, or check one."""
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="utils.py", description="Download or check OpenAI's GPT-2 checkpoints.", formatter_class=formatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    about = "fetch a model's files (continuing an interrupted download) and check every tensor"
    download = commands.add_parser("download", formatter_class=formatter, help=about, description=about)
    about = "check a downloaded model: every tensor against its crc32c, every shape against hparams.json"
    verify = commands.add_parser("verify", formatter_class=formatter, help=about, description=about)
    for command in (download, verify):
        command.add_argument("--model_size", default="124M", choices=MODEL_SIZES, help="which GPT-2")
        command.add_argument("--models_dir", default="models", help="where checkpoints live, one folder per size")
    download.add_argument(
        "--base_url", default=os.environ.get("GPT2_BASE_URL") or BASE_URL,
        help="files come from <base_url>/<model_size>/<file>; GPT2_BASE_URL sets the default",
    )
    args = parser.parse_args(argv)
    model_dir = Path(args.models_dir) / args.model_size
    try:
        if args.command == "download":
            fetched = download_gpt2_files(args.model_size, model_dir, args.base_url, check=check_shapes)
            if fetched:
                print(f"{model_dir}: fetched {', '.join(fetched)}; every tensor passed its crc32c check and fits hparams.json")
            else:
                print(f"{model_dir} already holds GPT-2 {args.model_size} (`python utils.py verify` checks its tensors)")
        else:
            checked = verify_model(model_dir)
            print(f"{model_dir}: OK, {checked:,} bytes of tensors match their crc32c and hparams.json")
    except (ValueError, OSError) as e:
        sys.exit(f"utils.py: error: {e}")
    except KeyboardInterrupt as e:
        sys.exit(f"utils.py: {str(e) or 'interrupted'}")


if __name__ == "__main__":
    main()
