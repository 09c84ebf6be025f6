"""pytorch_model.bin read without PyTorch and without unpickling anything but tensors (pytorch_bin.py).

Folders are written as transformers before version 5 wrote them: torch.save of the state dict, beside
config.json. The loaded model must equal transformers' on the same folder; a pickle that names anything
but the tensor-rebuild records must be refused before any of it runs.
"""
import json
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch

import gpt2
import pytorch_bin
import utils
from conftest import VOCAB_DIR, hf_model, random_params
from test_hf import TINY, hf_reference

PROMPT_IDS = [464, 3290, 318, 257, 922, 11]


def write_bin_folder(folder, dtype="float32", shards=1, lm_head=False):
    """config.json, vocab files and the state dict in pytorch_model.bin (or in `shards` files with an index)."""
    model = hf_model(TINY, random_params(TINY, 7, lm_head=lm_head)).to(getattr(torch, dtype))
    folder.mkdir()
    model.config.save_pretrained(folder)
    state = model.state_dict()  # keeps lm_head.weight, sharing wte's storage when tied, as older transformers saved it
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        names = sorted(state)
        weight_map = {name: f"pytorch_model-{i % shards + 1:05d}-of-{shards:05d}.bin" for i, name in enumerate(names)}
        for shard in set(weight_map.values()):
            torch.save({n: state[n] for n in names if weight_map[n] == shard}, folder / shard)
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copyfile(VOCAB_DIR / "encoder.json", folder / "vocab.json")
    shutil.copyfile(VOCAB_DIR / "vocab.bpe", folder / "merges.txt")
    return folder


@pytest.mark.parametrize("dtype, shards, lm_head", [("float32", 1, False), ("float16", 1, False),
                                                    ("bfloat16", 3, False), ("float32", 2, True)])
def test_logits_equal_hf(tmp_path, dtype, shards, lm_head):
    folder = write_bin_folder(tmp_path / "model", dtype, shards, lm_head)
    _, hparams, params = utils.load_model(str(folder))
    assert hparams == TINY and ("lm_head" in params) == lm_head
    with torch.no_grad():
        expected = hf_reference(folder)(torch.tensor([PROMPT_IDS])).logits[0].numpy()
    np.testing.assert_allclose(gpt2.gpt2(PROMPT_IDS, **params, n_head=4), expected, rtol=1e-4, atol=1e-4)


def test_tensors_equal_torch_load(tmp_path):
    saved = {"a": torch.randn(3, 5), "b": torch.randn(4).half(), "c": torch.randn(6, 2).bfloat16().t(),
             "d": torch.arange(10, dtype=torch.int64)[2:7], "e": torch.tensor(1.5)}
    saved["f"] = saved["a"][1:, 2:]  # a strided view into a's storage
    torch.save(saved, tmp_path / "pytorch_model.bin")
    ours = pytorch_bin.read_pytorch_bin(tmp_path / "pytorch_model.bin")
    assert {name: dtype for name, (dtype, _) in ours.items()} == dict(a="F32", b="F16", c="BF16", d="I64", e="F32", f="F32")
    for name, tensor in saved.items():
        raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
        np.testing.assert_array_equal(ours[name][1].view(np.int16) if name == "c" else ours[name][1], raw.numpy())
    assert not ours["a"][1].flags.writeable


def zipped_pickle(path, payload):
    """A torch.save-shaped archive whose data.pkl is `payload`."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())


class RunsACommand:
    """What an attacker would put in a pickle: unpickling it calls os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


@pytest.mark.parametrize("make", [
    lambda marker: pickle.dumps({"wte.weight": RunsACommand(f"touch {marker}")}, protocol=2),
    lambda marker: pickle.dumps(RunsACommand(f"touch {marker}"), protocol=4),
    lambda marker: pickle.dumps({"x": __import__("builtins").eval}, protocol=2),
])
def test_a_pickle_naming_anything_else_is_refused_unrun(tmp_path, make):
    marker = tmp_path / "ran"
    path = tmp_path / "pytorch_model.bin"
    zipped_pickle(path, make(marker))
    refused = r"is not a plain state dict of tensors: it names (posix|os|__builtin__)\.(system|eval), which is not a tensor"
    with pytest.raises(ValueError, match=refused):
        pytorch_bin.read_pytorch_bin(path)
    assert not marker.exists()


def test_shapes_and_storages_are_checked(tmp_path):
    state = {"w": torch.zeros(4)}
    torch.save(state, tmp_path / "ok.bin")
    with zipfile.ZipFile(tmp_path / "ok.bin") as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    data = next(name for name in members if name.endswith("/data/0"))
    members[data] = members[data][:8]  # the storage holds 2 elements where the record says 4
    with zipfile.ZipFile(tmp_path / "short.bin", "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    with pytest.raises(ValueError, match="short.bin is not a plain state dict of tensors: storage ok/data/0 has 8 bytes, "
                                         "not 4 elements of <f4"):
        pytorch_bin.read_pytorch_bin(tmp_path / "short.bin")


def test_bounds_of_a_strided_view_are_checked(tmp_path):
    record = pytorch_bin.rebuild_tensor
    storage = pytorch_bin.Storage("F32", np.arange(10, dtype=np.float32))
    assert record(storage, 2, (2, 3), (3, 1)).array.tolist() == [[2, 3, 4], [5, 6, 7]]
    with pytest.raises(pickle.UnpicklingError, match=r"a tensor of size \[2, 3\] reaches element 10 of a storage of 10"):
        record(storage, 5, (2, 3), (3, 1))
    with pytest.raises(pickle.UnpicklingError, match="does not have the form"):
        record(storage, -1, (2,), (1,))


def test_the_format_before_pytorch_1_6_gets_a_clear_error(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="is not a zip archive: .* use the model's model.safetensors, or re-save"):
        pytorch_bin.read_pytorch_bin(path)
