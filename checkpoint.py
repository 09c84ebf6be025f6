"""Read TensorFlow checkpoints (OpenAI's GPT-2 files) without TensorFlow: memory-mapped and checksummed.

A checkpoint `prefix` ("models/124M/model.ckpt") is a TensorFlow tensor bundle, defined in TensorFlow's
tensorflow/core/util/tensor_bundle/ (tensor_bundle.{h,cc}; naming.cc for the file names):
- `prefix.data-00000-of-00001` (one file per shard): every tensor's raw little-endian bytes, back to back.
- `prefix.index`: an SSTable, the immutable sorted table of LevelDB (doc/table_format.md, table/format.cc
  and table/block_builder.cc in LevelDB; TensorFlow keeps a copy in tensorflow/core/lib/io/, now tsl/lib/io/).
  A 48-byte footer holds the (offset, size) handles of the metaindex and index blocks and the magic number.
  The index block maps each data block's last key to its handle. A block is a run of entries (key length
  shared with the previous key, the new key bytes, the value) followed by a restart array, and is stored
  with a 5-byte trailer: compression type (0 none, 1 snappy) and a masked crc32c of block and type byte.
- Each value is a protobuf message from tensorflow/core/protobuf/tensor_bundle.proto, decoded here by hand
  (protobuf's "Encoding" guide): the empty key holds a BundleHeaderProto (num_shards, endianness, version),
  every other key is a tensor name holding a BundleEntryProto (dtype from types.proto, shape as a
  TensorShapeProto from tensor_shape.proto, shard_id, offset, size, masked crc32c of the bytes, slices).

Snappy blocks follow format_description.txt in Google's snappy. We read every fixed-width numeric dtype
NumPy represents exactly; bfloat16, strings and sliced (partitioned) variables are refused by name.
"""
import math
import os
from collections import namedtuple
from pathlib import Path

import crc32c
import numpy as np

FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic number
TABLE_MAGIC = 0xDB4775248B80FB57
CHUNK = 1 << 20  # verify() reads this many bytes at a time, so memory stays flat on a 6 GB file
# TensorFlow DataType numbers (types.proto) whose bytes NumPy reads as they are.
DTYPES = {
    1: "<f4", 2: "<f8", 19: "<f2", 3: "<i4", 5: "<i2", 6: "i1", 9: "<i8",
    4: "u1", 17: "<u2", 22: "<u4", 23: "<u8", 10: "?", 8: "<c8", 18: "<c16",
}
UNSUPPORTED = {7: "string", 14: "bfloat16", 20: "resource", 21: "variant"}

Entry = namedtuple("Entry", "dtype shape shard_id offset size crc32c sliced")


class CheckpointError(ValueError):
    """A checkpoint file that is truncated, corrupted, or in a form this reader does not handle."""


def read_tensors(prefix):
    """Checkpoint prefix -> {tensor name: read-only array}, each a view into the memory-mapped data file.

    Only the index is read and checked here; the tensor bytes are paged in when used. verify() checks them.
    """
    num_shards, entries = read_index(prefix)
    shards = [map_file(data_path(prefix, shard, num_shards)) for shard in range(num_shards)]
    tensors = {}
    for name, entry in entries.items():
        shard = shards[entry.shard_id]
        check_range(data_path(prefix, entry.shard_id, num_shards), name, entry, len(shard))
        array = np.frombuffer(shard, DTYPES[entry.dtype], count=math.prod(entry.shape), offset=entry.offset)
        tensors[name] = array.reshape(entry.shape)
    return tensors


def verify(prefix, progress=None):
    """Check every tensor's bytes against the crc32c in the index; return the number of bytes checked.

    Each data file is read once, in order, through one small buffer (no mapping, no copy of the file).
    `progress`, if given, is called with the size of each piece checked, so a
    `tqdm(total=<data file size>, unit="B", unit_scale=True).update` fits it.
    """
    num_shards, entries = read_index(prefix)
    buffer = memoryview(bytearray(CHUNK))
    checked = 0
    for shard in range(num_shards):
        path = data_path(prefix, shard, num_shards)
        in_shard = sorted((e.offset, name, e) for name, e in entries.items() if e.shard_id == shard)
        with open_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            for offset, name, entry in in_shard:
                check_range(path, name, entry, size)
                f.seek(offset)
                crc, left = 0, entry.size
                while left:
                    n = f.readinto(buffer[:min(left, CHUNK)])
                    if not n:
                        raise CheckpointError(f"{path} shrank while tensor {name} was being read: {redownload(path)}")
                    crc, left, checked = crc32c.crc32c(buffer[:n], crc), left - n, checked + n
                    if progress:
                        progress(n)
                if masked(crc) != entry.crc32c:
                    raise CheckpointError(
                        f"{path}: tensor {name} (bytes {offset} to {offset + entry.size}) fails its crc32c check "
                        f"(index says {entry.crc32c:#010x}, data gives {masked(crc):#010x}): {redownload(path)}"
                    )
    return checked


def read_index(prefix):
    """Checkpoint prefix -> (num_shards, {tensor name: Entry}), every index block's checksum checked."""
    path = f"{prefix}.index"
    with open_file(path) as f:
        data = f.read()
    try:
        records = dict(table_records(data))
        if b"" not in records:
            raise CheckpointError("it has no header record (the empty key)")
        header = dict(proto_fields(records.pop(b"")))
        num_shards, endianness = field(header, 1, 0), field(header, 2, 0)
        min_consumer = field(dict(proto_fields(field(header, 3, b""))), 2, 0)
        entries = {key.decode("utf-8", "backslashreplace"): parse_entry(value) for key, value in records.items()}
    except CheckpointError as e:
        raise CheckpointError(f"{path} is not a valid checkpoint index: {e}; {redownload(path)}") from None
    if endianness != 0:
        raise CheckpointError(f"{path} was written on a big-endian machine; only little-endian checkpoints are read")
    if min_consumer > 1:  # tensor_bundle.h's kTensorBundleVersion, the format version we understand
        raise CheckpointError(f"{path} needs a tensor bundle reader of version {min_consumer}; this one is version 1")
    if num_shards < 1:
        raise CheckpointError(f"{path} says the checkpoint has {num_shards} data files: {redownload(path)}")
    for name, entry in entries.items():
        check_entry(path, name, entry, num_shards)
    return num_shards, entries


def parse_entry(data):
    """BundleEntryProto bytes -> Entry; absent fields take protobuf's defaults (zero, empty)."""
    fields = dict(proto_fields(data))
    dims = [dict(proto_fields(dim)) for number, dim in proto_fields(field(fields, 2, b"")) if number == 2]
    shape = tuple(field(dim, 1, 0) for dim in dims)  # each Dim's field 1 is its size
    return Entry(field(fields, 1, 0), shape, field(fields, 3, 0), field(fields, 4, 0), field(fields, 5, 0),
                 field(fields, 6, 0), sliced=7 in fields)


def check_entry(path, name, entry, num_shards):
    """Raise a CheckpointError naming the tensor if its index entry cannot describe a plain array."""
    if entry.sliced:
        raise CheckpointError(f"{path}: tensor {name} is saved in slices (a partitioned variable), which is not supported")
    if entry.dtype not in DTYPES:
        dtype = UNSUPPORTED.get(entry.dtype, f"number {entry.dtype}")
        raise CheckpointError(
            f"{path}: tensor {name} has TensorFlow dtype {dtype}, which is not supported: only fixed-width "
            f"numeric dtypes NumPy reads exactly are (GPT-2's weights are float32)"
        )
    if entry.shard_id >= num_shards:
        raise CheckpointError(f"{path}: tensor {name} is in data file {entry.shard_id} of {num_shards}: {redownload(path)}")
    need = math.prod(entry.shape) * np.dtype(DTYPES[entry.dtype]).itemsize
    if entry.size != need:
        raise CheckpointError(
            f"{path}: tensor {name} has {entry.size} bytes, but shape {list(entry.shape)} of "
            f"{np.dtype(DTYPES[entry.dtype])} needs {need}: {redownload(path)}"
        )


def check_range(path, name, entry, file_size):
    """Raise a CheckpointError if the tensor's bytes run past the end of its data file."""
    if entry.offset + entry.size > file_size:
        raise CheckpointError(
            f"{path} is {file_size} bytes, but tensor {name} needs bytes {entry.offset} to "
            f"{entry.offset + entry.size}: the file is incomplete; {redownload(path)}"
        )


def table_records(data):
    """SSTable bytes -> its (key, value) pairs in order, reading each data block the index block names."""
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"it is {len(data)} bytes, shorter than a table footer ({FOOTER_SIZE} bytes)")
    footer = data[-FOOTER_SIZE:]
    if int.from_bytes(footer[-8:], "little") != TABLE_MAGIC:
        raise CheckpointError("it does not end with the table magic number (truncated?)")
    _, pos = block_handle(footer, 0)  # the metaindex block: TensorFlow writes it empty
    index_handle, _ = block_handle(footer, pos)
    blocks_end = len(data) - FOOTER_SIZE
    for _, value in block_records(read_block(data, index_handle, blocks_end)):
        yield from block_records(read_block(data, block_handle(value, 0)[0], blocks_end))


def block_handle(data, pos):
    """A BlockHandle (varint offset, varint size) at data[pos:] -> ((offset, size), position after it)."""
    offset, pos = varint(data, pos)
    size, pos = varint(data, pos)
    return (offset, size), pos


def read_block(data, handle, blocks_end):
    """The contents of the block at handle, its checksum checked and snappy undone if it was used."""
    offset, size = handle
    if offset + size + 5 > blocks_end:
        raise CheckpointError(f"a block at bytes {offset} to {offset + size + 5} runs past the end of the blocks")
    block, kind = data[offset:offset + size], data[offset + size]
    stored = int.from_bytes(data[offset + size + 1:offset + size + 5], "little")
    if masked(crc32c.crc32c(bytes([kind]), crc32c.crc32c(block))) != stored:
        raise CheckpointError(f"the block at byte {offset} fails its crc32c check")
    if kind == 0:
        return block
    if kind == 1:
        return snappy_decompress(block)
    raise CheckpointError(f"the block at byte {offset} has unknown compression type {kind}")


def block_records(block):
    """A block's (key, value) pairs; each key is stored as the length it shares with the previous key plus the rest.

    The restart array at the end (offsets of entries that share nothing, for binary search) is skipped.
    """
    if len(block) < 4:
        raise CheckpointError(f"a block is {len(block)} bytes, too short for its restart count")
    entries_end = len(block) - 4 - 4 * int.from_bytes(block[-4:], "little")
    if entries_end < 0:
        raise CheckpointError("a block's restart array is longer than the block")
    pos, key = 0, b""
    while pos < entries_end:
        shared, pos = varint(block, pos)
        unshared, pos = varint(block, pos)
        value_size, pos = varint(block, pos)
        if shared > len(key) or pos + unshared + value_size > entries_end:
            raise CheckpointError("a block entry runs past the end of its block")
        key = key[:shared] + block[pos:pos + unshared]
        yield key, block[pos + unshared:pos + unshared + value_size]
        pos += unshared + value_size


def proto_fields(data):
    """Protobuf bytes -> (field number, value) pairs: an int for varint and fixed fields, bytes for the rest."""
    if not isinstance(data, bytes):
        raise CheckpointError("a record holds a number where a message belongs")
    pos = 0
    while pos < len(data):
        key, pos = varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = varint(data, pos)
        elif wire_type in (1, 5):  # fixed64, fixed32
            value, pos = take(data, pos, 8 if wire_type == 1 else 4)
            value = int.from_bytes(value, "little")
        elif wire_type == 2:
            size, pos = varint(data, pos)
            value, pos = take(data, pos, size)
        else:
            raise CheckpointError(f"a record has protobuf wire type {wire_type}, which tensor bundles never use")
        yield number, value


def field(fields, number, default):
    """fields[number], or default if absent; a value of the wrong wire type (int vs bytes) is corruption."""
    value = fields.get(number, default)
    if type(value) is not type(default):
        raise CheckpointError(f"a record has protobuf field {number} of the wrong wire type")
    return value


def snappy_decompress(data):
    """Raw snappy bytes -> the original: a varint length, then literal runs and copies of earlier output.

    Each element's tag byte says its kind in the low 2 bits: 0 literal, 1-3 copies with 1-, 2- or 4-byte offsets.
    """
    length, pos = varint(data, 0)
    out = bytearray()
    while pos < len(data):
        tag, kind = data[pos], data[pos] & 3
        pos += 1
        if kind == 0:
            size = tag >> 2
            if size >= 60:  # 60..63: the size minus one follows in 1..4 bytes
                size, pos = take(data, pos, size - 59)
                size = int.from_bytes(size, "little")
            literal, pos = take(data, pos, size + 1)
            out += literal
            continue
        if kind == 1:
            size, offset = 4 + (tag >> 2 & 7), tag >> 5 << 8
            low, pos = take(data, pos, 1)
            offset |= low[0]
        else:
            size = (tag >> 2) + 1
            offset, pos = take(data, pos, 2 if kind == 2 else 4)
            offset = int.from_bytes(offset, "little")
        if not 0 < offset <= len(out):
            raise CheckpointError(f"a snappy block copies from {offset} bytes back, with {len(out)} bytes written")
        piece = out[len(out) - offset:len(out) - offset + size]
        out += (piece * (size // len(piece) + 1))[:size]  # a copy may overlap the bytes it writes
    if len(out) != length:
        raise CheckpointError(f"a snappy block gives {len(out)} bytes where it says {length}")
    return bytes(out)


def varint(data, pos):
    """The little-endian base-128 integer at data[pos:] -> (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CheckpointError("a varint runs past the end of its record")
        value |= (data[pos] & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if data[pos - 1] < 0x80:
            return value, pos


def take(data, pos, size):
    """(data[pos:pos + size], pos + size), or a CheckpointError if fewer bytes are left."""
    if pos + size > len(data):
        raise CheckpointError(f"a record needs {size} bytes at {pos} but ends at {len(data)}")
    return data[pos:pos + size], pos + size


def masked(crc):
    """The masked crc32c LevelDB and TensorFlow store: rotated right by 15 bits, plus a constant."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def data_path(prefix, shard, num_shards):
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def open_file(path):
    """open(path, "rb"), with a FileNotFoundError that says what to do."""
    try:
        return open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: the checkpoint is incomplete; {redownload(path)}") from None


def map_file(path):
    """A data file as a read-only uint8 array mapped from disk."""
    with open_file(path) as f:
        if os.fstat(f.fileno()).st_size == 0:
            return np.frombuffer(b"", np.uint8)  # mmap refuses empty files
        return np.memmap(f, np.uint8, mode="r")


def redownload(path):
    return f"delete {Path(path).parent} and download it again"
