"""Read pytorch_model.bin without PyTorch, and without running any code the file names.

torch.save (PyTorch 1.6 and later) writes a zip archive: `<root>/data.pkl` is a pickle of the state dict in
which each tensor is a call `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
requires_grad, backward_hooks)`, and each storage a persistent id `("storage", torch.FloatStorage, key,
location, numel)` whose bytes are the archive member `<root>/data/<key>`, stored uncompressed;
`<root>/byteorder`, if present, says "little" or "big".

A pickle may name any importable callable and have the loader call it, so pickle.load on downloaded bytes
runs whatever its author chose. This unpickler resolves only the names a state dict needs, to stand-ins of
our own (collections.OrderedDict, the tensor-rebuild call, the storage types), and refuses every other name
before anything is called: the file can describe tensors and nothing else (Python's pickle documentation,
"Restricting Globals"). Tensors are read-only views into the memory-mapped archive, as safetensors ones are.
"""
import collections
import math
import pickle
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np

# torch's storage types -> (safetensors' name for the dtype, NumPy dtype of the raw bytes); BF16 as raw bits.
STORAGES = {
    "FloatStorage": ("F32", "<f4"), "HalfStorage": ("F16", "<f2"), "BFloat16Storage": ("BF16", "<u2"),
    "DoubleStorage": ("F64", "<f8"), "LongStorage": ("I64", "<i8"), "IntStorage": ("I32", "<i4"),
    "ShortStorage": ("I16", "<i2"), "CharStorage": ("I8", "i1"), "ByteStorage": ("U8", "u1"), "BoolStorage": ("BOOL", "?"),
}
StorageType = namedtuple("StorageType", "dtype raw")  # what the pickle's `torch.FloatStorage` etc. resolve to
Storage = namedtuple("Storage", "dtype elements")  # one storage: its dtype name and its elements, a 1D view
Tensor = namedtuple("Tensor", "dtype array")  # what each rebuild call gives: (dtype name, read-only view)


def read_pytorch_bin(path):
    """pytorch_model.bin -> {tensor name: (dtype, read-only array)}, like hf_checkpoint.read_safetensors."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a zip archive: it is either damaged or in the format of PyTorch before 1.6, "
                         f"which is not read here; use the model's model.safetensors, or re-save the folder with "
                         f"transformers (GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder))")
    mapped = np.memmap(path, np.uint8, mode="r")
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path} holds {len(pickles)} data.pkl records where torch.save writes one")
        root = pickles[0].removesuffix("data.pkl")
        if root + "byteorder" in archive.namelist() and archive.read(root + "byteorder") != b"little":
            raise ValueError(f"{path} was saved on a big-endian machine; only little-endian files are read")
        storages = {}

        def storage(key, kind, numel):
            if key not in storages:
                storages[key] = Storage(kind.dtype, member_array(path, archive, mapped, f"{root}data/{key}", kind.raw, numel))
            return storages[key]

        with archive.open(pickles[0]) as f:
            try:
                state = StateDictUnpickler(f, storage).load()
            except Exception as e:  # whatever the bytes provoke: a refused name, a malformed pickle, bad sizes
                raise ValueError(f"{path} is not a plain state dict of tensors: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"{path} does not hold a state dict (names -> tensors), so it is not a model's weights")
    return dict(state)


class StateDictUnpickler(pickle.Unpickler):
    """An unpickler that knows only the names a state dict of tensors uses; `storage(key, kind, numel)` maps one."""

    def __init__(self, file, storage):
        super().__init__(file)
        self.storage = storage

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor
        if module == "torch" and name in STORAGES:
            return StorageType(*STORAGES[name])
        raise pickle.UnpicklingError(f"it names {module}.{name}, which is not a tensor record: refused, never imported")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], StorageType)
                and isinstance(pid[2], str) and is_count(pid[4])):
            raise pickle.UnpicklingError(f"it refers to {pid!r}, which is not a tensor storage")
        return self.storage(pid[2], pid[1], pid[4])


def rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2's stand-in: a read-only strided view into the storage, bounds checked."""
    if not (isinstance(storage, Storage) and is_count(storage_offset) and isinstance(size, tuple)
            and isinstance(stride, tuple) and len(size) == len(stride) and all(map(is_count, size + stride))):
        raise pickle.UnpicklingError("a tensor record does not have the form (storage, offset, size, stride, ...)")
    elements = storage.elements
    last = storage_offset + sum((n - 1) * step for n, step in zip(size, stride))  # the furthest element it reads
    if math.prod(size) and last >= len(elements):
        raise pickle.UnpicklingError(f"a tensor of size {list(size)} reaches element {last} of a storage of {len(elements)}")
    start = elements[min(storage_offset, len(elements)):]
    array = np.lib.stride_tricks.as_strided(start, size, [step * elements.itemsize for step in stride], writeable=False)
    return Tensor(storage.dtype, array)


def member_array(path, archive, mapped, name, raw, numel):
    """The archive member `name` as numel elements of NumPy dtype `raw`: a view into `mapped` when it is stored."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise pickle.UnpicklingError(f"the storage {name} it refers to is not in the archive") from None
    if info.file_size != numel * np.dtype(raw).itemsize:
        raise pickle.UnpicklingError(f"storage {name} has {info.file_size} bytes, not {numel} elements of {raw}")
    if info.compress_type != zipfile.ZIP_STORED:  # torch.save never compresses, but a re-zipped file might
        return np.frombuffer(archive.read(name), raw)
    header = bytes(mapped[info.header_offset:info.header_offset + 30])  # the member's local file header
    if header[:4] != b"PK\x03\x04":
        raise pickle.UnpicklingError(f"the archive's entry for {name} does not point at its data")
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    if start + info.file_size > len(mapped):
        raise pickle.UnpicklingError(f"storage {name} runs past the end of {path}")
    return np.frombuffer(mapped, raw, count=numel, offset=start)


def is_count(n):
    return type(n) is int and n >= 0
