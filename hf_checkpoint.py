"""Read GPT-2 models saved in HuggingFace's layout: config.json plus safetensors (or pytorch_model.bin) weights.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON mapping each tensor's name to
{"dtype", "shape", "data_offsets": [begin, end]} (byte offsets into the data that follows, plus an optional
"__metadata__" of strings), then the raw little-endian tensor bytes. The header is checked against the file
before anything is trusted (as the `safetensors` package does): it fits in the file, every dtype is known,
every tensor's byte count is its shape times its dtype's size, and the tensors tile the data exactly, with no
overlap and no gap. The file is memory-mapped: float32 tensors are views into it (nothing is copied; pages
are read when used), float16 and bfloat16 ones become float32 copies as they load.

A sharded model lists its files in model.safetensors.index.json ({"weight_map": {tensor: file}}); a folder
with pytorch_model.bin is read by pytorch_bin.py. Tensor names come with or without the `transformer.`
prefix (GPT2LMHeadModel vs GPT2Model). HF's Conv1D weights are [nx, nf], as in our params dict.
config.json is honoured where the forward pass (gpt2.py) computes exactly what GPT-2's HF class would, and
refused, naming the field, where it would not.
"""
import json
import math
import re
from pathlib import Path

import numpy as np

import pytorch_bin

# Weight files in the order they are looked for; the first present is read.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# safetensors dtype -> (NumPy dtype of its raw bytes, bytes per element); BF16 is read as its raw 16 bits.
DTYPES = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1),
    "U64": ("<u8", 8), "U32": ("<u4", 4), "U16": ("<u2", 2), "U8": ("u1", 1), "BOOL": ("?", 1),
    "F8_E4M3": ("u1", 1), "F8_E5M2": ("u1", 1),
}
MAX_HEADER = 100_000_000  # the safetensors package's limit on the JSON header
# activation_function values that name GPT-2's tanh approximation of GELU, which gpt2.py computes; in
# transformers' ACT2FN these are all 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), differing in rounding
# only ("gelu_fast" writes sqrt(2/pi) as 0.7978845608, the same float32). "gelu" (erf) and others are not.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast", "gelu_accurate")
# Buffers of HF's attention (the causal mask and its fill value) that older checkpoints saved; not weights.
IGNORED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def read_safetensors(path):
    """A .safetensors file -> {tensor name: (dtype, read-only array)}, each array a view into the mapped file.

    dtype is safetensors' name ("F32", "BF16", ...); BF16 arrays hold the raw bits as uint16 (see as_float32).
    """
    path = Path(path)
    data = np.memmap(path, np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
    entries, start = read_header(path, data)
    tensors = {}
    for name, (dtype, shape, begin, _) in entries.items():
        raw, _ = DTYPES[dtype]
        array = np.frombuffer(data, raw, count=math.prod(shape), offset=start + begin)
        tensors[name] = (dtype, array.reshape(shape))
    return tensors


def read_header(path, data):
    """The header of a safetensors file's bytes -> ({name: (dtype, shape, begin, end)}, where the data starts).

    Raises a ValueError naming the file (and the tensor) if the header does not describe this file exactly.
    """
    if len(data) < 8:
        raise ValueError(f"{path} is {len(data)} bytes, too short for a safetensors header: {fetch_again(path)}")
    size = int.from_bytes(data[:8], "little")
    if size > min(MAX_HEADER, len(data) - 8):
        raise ValueError(f"{path}: the header is said to be {size:,} bytes, but the file holds {len(data) - 8:,} "
                         f"after the length: the file is truncated or not safetensors; {fetch_again(path)}")
    try:
        header = json.loads(bytes(data[8:8 + size]).decode("utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: the header is not JSON ({e}): {fetch_again(path)}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object: {fetch_again(path)}")
    header.pop("__metadata__", None)
    data_size, entries = len(data) - 8 - size, {}
    for name, entry in header.items():
        entries[name] = header_entry(path, name, entry, data_size)
    end = 0  # the tensors, in file order, must tile the data: each starts where the previous one ended
    for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != end:
            problem = "overlaps the tensor before it" if begin < end else f"leaves bytes {end} to {begin} unused"
            raise ValueError(f"{path}: tensor {name} (bytes {begin} to {stop}) {problem}: {fetch_again(path)}")
        end = stop
    if end != data_size:
        raise ValueError(f"{path}: the tensors end at byte {end} of {data_size} data bytes: {fetch_again(path)}")
    return entries, 8 + size


def header_entry(path, name, entry, data_size):
    """One header entry -> (dtype, shape, begin, end), checked: the dtype known, the byte count its shape's."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"{path}: header entry {name} is not {{dtype, shape, data_offsets}}: {fetch_again(path)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise ValueError(f"{path}: tensor {name} has dtype {dtype!r}, which this reader does not know "
                         f"(it reads {', '.join(DTYPES)})")
    whole = lambda n: type(n) is int and n >= 0
    if not (isinstance(shape, list) and all(map(whole, shape))):
        raise ValueError(f"{path}: tensor {name} has shape {shape!r}, not a list of sizes: {fetch_again(path)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(whole, offsets)) and offsets[0] <= offsets[1]):
        raise ValueError(f"{path}: tensor {name} has data_offsets {offsets!r}, not [begin, end]: {fetch_again(path)}")
    begin, end = offsets
    if end > data_size:
        raise ValueError(f"{path}: tensor {name} needs bytes {begin} to {end} of the data, which has {data_size}: "
                         f"the file is truncated; {fetch_again(path)}")
    need = math.prod(shape) * DTYPES[dtype][1]
    if end - begin != need:
        raise ValueError(f"{path}: tensor {name} has {end - begin} bytes, but shape {shape} of {dtype} needs {need}: "
                         f"{fetch_again(path)}")
    return dtype, tuple(shape), begin, end


def shard_names(index_path):
    """model.safetensors.index.json (or pytorch_model.bin.index.json) -> {tensor name: shard file name}."""
    try:
        weight_map = json.loads(Path(index_path).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{index_path} does not parse as a shard index ({e!r}): {fetch_again(index_path)}") from None
    for name, shard in weight_map.items() if isinstance(weight_map, dict) else [(None, None)]:
        if not isinstance(shard, str) or not re.fullmatch(r"[\w-][\w.-]*", shard):
            raise ValueError(f"{index_path}: tensor {name} is in {shard!r}, not a file name beside the index")
    return weight_map


def read_weights(folder):
    """A model folder -> {tensor name: (dtype, array)} from the first of WEIGHT_FILES it holds."""
    folder = Path(folder)
    name = next((name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if name is None:
        raise FileNotFoundError(f"{folder} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")
    read = read_safetensors if name.startswith("model.safetensors") else pytorch_bin.read_pytorch_bin
    if not name.endswith(".index.json"):
        return read(folder / name)
    weight_map, tensors = shard_names(folder / name), {}
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            raise FileNotFoundError(f"{folder / shard} is missing, a shard that {name} lists: {fetch_again(folder / name)}")
        tensors.update(read(folder / shard))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise ValueError(f"{folder}: tensor {missing[0]} is not in {weight_map[missing[0]]}, where {name} says it is")
    return tensors


def read_config(path):
    """config.json -> (hparams, n_inner, tied): what gpt2.py needs, or a ValueError naming a field it cannot honour.

    hparams is {"n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"}; absent fields take GPT2Config's defaults,
    and HF's other names for them (hidden_size, max_position_embeddings, ...) are understood.
    """
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read as JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} should hold a JSON object")
    model_type, architectures = config.get("model_type", "gpt2"), config.get("architectures") or []
    if model_type != "gpt2":
        raise ValueError(f"{path}: model_type is {model_type!r}; this engine runs GPT-2 (model_type gpt2) only")
    other = [a for a in architectures if not str(a).startswith("GPT2")]
    if other:
        raise ValueError(f"{path}: architectures names {other[0]}; this engine runs GPT-2 (GPT2LMHeadModel) only")

    def field(name, alias, default):
        value = config.get(name, config.get(alias, default))
        if alias in config and name in config and config[alias] != config[name]:
            raise ValueError(f"{path}: {name} ({config[name]}) and {alias} ({config[alias]}) disagree")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {name} should be a positive whole number, got {value!r}")
        return value

    hparams = dict(n_vocab=field("vocab_size", "vocab_size", 50257),
                   n_ctx=field("n_positions", "max_position_embeddings", 1024),
                   n_embd=field("n_embd", "hidden_size", 768), n_head=field("n_head", "num_attention_heads", 12),
                   n_layer=field("n_layer", "num_hidden_layers", 12))
    if hparams["n_embd"] % hparams["n_head"]:
        raise ValueError(f"{path}: n_embd ({hparams['n_embd']}) is not a multiple of n_head ({hparams['n_head']})")
    n_inner = 4 * hparams["n_embd"] if config.get("n_inner") is None else field("n_inner", "n_inner", None)
    supported = {  # field: (GPT2Config's default, whether gpt2.py runs the value, why not)
        "layer_norm_epsilon": (1e-5, lambda v: v == 1e-5, "gpt2.py's layer norm uses 1e-5"),
        "activation_function": ("gelu_new", lambda v: v in TANH_GELU, "gpt2.py computes GELU's tanh approximation "
                                f"({', '.join(TANH_GELU)})"),
        "scale_attn_weights": (True, lambda v: v is True, "gpt2.py divides attention scores by sqrt(n_embd / n_head)"),
        "scale_attn_by_inverse_layer_idx": (False, lambda v: v is False, "gpt2.py does not scale by 1 / layer"),
        "add_cross_attention": (False, lambda v: v is False, "gpt2.py has no cross-attention"),
        "tie_word_embeddings": (True, lambda v: isinstance(v, bool), "it should be true or false"),
    }
    for name, (default, honoured, why) in supported.items():
        if not honoured(config.get(name, default)):
            raise ValueError(f"{path}: {name} is {config[name]!r}, which this engine does not run: {why}")
    # reorder_and_upcast_attn changes only how HF rounds attention in float16 (it upcasts the scores to
    # float32); gpt2.py computes in float32 throughout, so either value gives the same model here.
    return hparams, n_inner, config.get("tie_word_embeddings", True)


def load_hf_model(folder):
    """A HuggingFace model folder -> (hparams, params): params keyed as gpt2.py's, every array float32.

    float32 tensors stay views into the mapped file; float16 and bfloat16 ones are converted (copied) here.
    params holds "lm_head" only when the weights have an lm_head.weight that differs from wte.
    """
    folder = Path(folder)
    hparams, n_inner, tied = read_config(folder / "config.json")
    tensors, names = read_weights(folder), {}
    for name in tensors:
        short = name.removeprefix("transformer.")
        if short in names:
            raise ValueError(f"{folder} holds both {names[short]} and {name}: which one is meant is unclear")
        names[short] = name
    shapes = hf_shapes(hparams, n_inner)
    for short, name in names.items():
        if short not in shapes and not IGNORED.fullmatch(short) and re.match(r"(h\.\d+|wte|wpe|ln_f)\.", short):
            raise ValueError(f"{folder}: tensor {name} is not part of a GPT-2 of {hparams['n_layer']} layers "
                             f"(config.json's n_layer) without cross-attention")
    params = {"blocks": [{} for _ in range(hparams["n_layer"])]}
    for short, shape in shapes.items():
        if short not in names:
            raise ValueError(f"{folder} lacks tensor {short} (or transformer.{short}), which config.json implies")
        dtype, array = tensors[names[short]]
        if array.shape != shape:
            raise ValueError(f"{folder}: tensor {names[short]} has shape {list(array.shape)}, but config.json "
                             f"implies {list(shape)}")
        place(params, short, as_float32(folder, names[short], dtype, array))
    lm_head = lm_head_of(folder, tensors, tensors[names["wte.weight"]], hparams, tied)
    if lm_head is not None:
        params["lm_head"] = lm_head
    return hparams, params


def hf_shapes(hparams, n_inner):
    """The tensors (without the `transformer.` prefix) a GPT-2 of these hparams holds in HF's naming: {name: shape}.

    {"n_embd": 768, "n_layer": 12, ...}, 3072 -> {"wte.weight": (50257, 768), ..., "h.0.mlp.c_fc.weight": (768, 3072), ...}
    """
    n_embd = hparams["n_embd"]
    block = {
        "ln_1.weight": (n_embd,), "ln_1.bias": (n_embd,),
        "attn.c_attn.weight": (n_embd, 3 * n_embd), "attn.c_attn.bias": (3 * n_embd,),
        "attn.c_proj.weight": (n_embd, n_embd), "attn.c_proj.bias": (n_embd,),
        "ln_2.weight": (n_embd,), "ln_2.bias": (n_embd,),
        "mlp.c_fc.weight": (n_embd, n_inner), "mlp.c_fc.bias": (n_inner,),
        "mlp.c_proj.weight": (n_inner, n_embd), "mlp.c_proj.bias": (n_embd,),
    }
    shapes = {"wte.weight": (hparams["n_vocab"], n_embd), "wpe.weight": (hparams["n_ctx"], n_embd),
              "ln_f.weight": (n_embd,), "ln_f.bias": (n_embd,)}
    for i in range(hparams["n_layer"]):
        shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
    return shapes


def place(params, short, array):
    """Put HF's tensor `short` where gpt2.py takes it: "h.3.attn.c_attn.weight" -> blocks[3]["attn"]["c_attn"]["w"]."""
    *scope, leaf = short.split(".")
    if scope in (["wte"], ["wpe"]):
        params[scope[0]] = array
        return
    node = params
    if scope[0] == "h":
        node, scope = params["blocks"][int(scope[1])], scope[2:]
    for key in scope:
        node = node.setdefault(key, {})
    node[{"weight": "g" if scope[-1].startswith("ln") else "w", "bias": "b"}[leaf]] = array


def lm_head_of(folder, tensors, wte, hparams, tied):
    """The unembedding to use instead of wte, or None when it is wte (tied, absent, or bit-equal to it).

    As transformers does: an lm_head.weight that differs from wte is used even if config.json says tied.
    """
    if "lm_head.weight" not in tensors:
        if not tied:
            raise ValueError(f"{folder}: config.json unties the unembedding (tie_word_embeddings false) but the "
                             f"weights hold no lm_head.weight")
        return None
    dtype, array = tensors["lm_head.weight"]
    if array.shape != (hparams["n_vocab"], hparams["n_embd"]):
        raise ValueError(f"{folder}: tensor lm_head.weight has shape {list(array.shape)}, but config.json implies "
                         f"{[hparams['n_vocab'], hparams['n_embd']]}")
    if (dtype, array.shape) == (wte[0], wte[1].shape) and np.array_equal(array, wte[1]):
        return None
    return as_float32(folder, "lm_head.weight", dtype, array)


def as_float32(folder, name, dtype, array):  # [...] -> [...] float32
    """A stored tensor as float32: F32 as it is (a view), F16 and BF16 converted exactly; others refused by name."""
    if dtype == "F32":
        return array
    if dtype == "F16":
        return array.astype(np.float32)
    if dtype == "BF16":  # bfloat16 is the top half of a float32: shift the 16 bits into place
        return (array.astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"{folder}: tensor {name} is {dtype}; this engine reads weights stored as F32, F16 or BF16")


def fetch_again(path):
    return f"delete {path} and fetch it again"
