"""checkpoint.py against TensorFlow's own reader, on checkpoints TensorFlow writes, plus damaged copies of them."""
import os
import re
import shutil
import subprocess
import sys

import crc32c
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import checkpoint
from checkpoint import CheckpointError
from conftest import ROOT, random_params, write_checkpoint

TINY = dict(n_vocab=37, n_ctx=7, n_embd=8, n_head=2)
LAYER_COUNTS = (12, 24, 36, 48)  # 124M, 355M, 774M, 1558M
SHARD = "model.ckpt.data-00000-of-00001"


@pytest.fixture(scope="session")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow

    return tensorflow


@pytest.fixture(scope="session")
def gpt2_prefixes(tf, tmp_path_factory):
    """{n_layer: prefix} of tiny GPT-2-shaped checkpoints with each released size's layer count."""
    models_dir = tmp_path_factory.mktemp("models")
    out = {}
    for n_layer in LAYER_COUNTS:
        hparams = dict(TINY, n_layer=n_layer)
        out[n_layer] = str(write_checkpoint(models_dir, f"L{n_layer}", hparams, random_params(hparams, n_layer)) / "model.ckpt")
    return out


@pytest.fixture
def prefix(gpt2_prefixes, tmp_path):
    """A private copy of the 12-layer checkpoint, for a test to damage."""
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copyfile(gpt2_prefixes[12] + suffix, f"{tmp_path}/model.ckpt{suffix}")
    return f"{tmp_path}/model.ckpt"


def tf_save(tf, prefix, values, devices=None):
    """Save {name: value or (value, tf dtype)} with TF1's Saver, one shard per device if devices are given."""
    graph = tf.Graph()
    with graph.as_default():
        for i, (name, value) in enumerate(values.items()):
            value, dtype = value if isinstance(value, tuple) else (value, None)
            with tf.device(devices[i % len(devices)] if devices else None):
                tf.Variable(value, dtype=dtype, name=name)
        saver = tf.compat.v1.train.Saver(sharded=bool(devices))
        config = tf.compat.v1.ConfigProto(device_count={"CPU": len(devices or [0])})
        with tf.compat.v1.Session(graph=graph, config=config) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix)
    return prefix


def assert_same_as_tf(tf, prefix, tensors):
    """Every tensor TF lists is in `tensors` with the same dtype, shape and bytes, and nothing else is."""
    assert sorted(tensors) == [name for name, _ in tf.train.list_variables(prefix)]
    for name, array in tensors.items():
        expected = np.asarray(tf.train.load_variable(prefix, name))
        assert (array.dtype, array.shape) == (expected.dtype, expected.shape), name
        assert array.tobytes() == expected.tobytes(), name


def entries(prefix):
    return checkpoint.read_index(prefix)[1]


def flip_byte(path, pos):
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ 0x55]))


# Reading: bit-identical to TensorFlow.

@pytest.mark.parametrize("n_layer", LAYER_COUNTS)
def test_gpt2_shaped_checkpoints_match_tf(tf, gpt2_prefixes, n_layer):
    prefix = gpt2_prefixes[n_layer]
    tensors = checkpoint.read_tensors(prefix)
    assert len(tensors) == 4 + 12 * n_layer
    assert tensors["model/h0/attn/c_attn/w"].shape == (1, TINY["n_embd"], 3 * TINY["n_embd"])
    assert all(array.dtype == np.float32 for array in tensors.values())
    assert_same_as_tf(tf, prefix, tensors)
    assert checkpoint.verify(prefix) == os.path.getsize(f"{prefix}.data-00000-of-00001")


def test_tensors_are_read_only_views_into_the_mapped_file(gpt2_prefixes):
    tensors = checkpoint.read_tensors(gpt2_prefixes[12])
    data = tensors["model/wte"].base.base
    assert isinstance(data, np.memmap)
    assert all(np.shares_memory(array, data) and not array.flags.writeable for array in tensors.values())
    with pytest.raises(ValueError, match="read-only"):
        tensors["model/wte"][0, 0] = 1.0


def test_other_numeric_dtypes_scalars_and_empty_tensors_match_tf(tf, tmp_path):
    # One-byte tensors first, so the wider ones that follow sit at unaligned offsets in the data file.
    values = {
        "a_bool": np.array([True, False, True]), "a_int8": np.array([-3, 7], np.int8), "b_uint8": np.arange(3, dtype=np.uint8),
        "float16": np.array([0.5, -2.0], np.float16), "float64": np.array([np.pi, -1e300]), "int32": np.arange(-2, 3, dtype=np.int32),
        "int64": np.array([2**62, -5]), "uint64": np.array([2**64 - 1], np.uint64), "uint16": np.arange(4, dtype=np.uint16),
        "uint32": np.array([2**32 - 1], np.uint32), "int16": np.array([-300], np.int16), "complex64": np.array([1 + 2j], np.complex64),
        "complex128": np.array([[3 - 4j]]), "scalar": np.float32(2.5), "empty": np.zeros((0, 3), np.float32),
    }
    prefix = tf_save(tf, str(tmp_path / "model.ckpt"), values)
    tensors = checkpoint.read_tensors(prefix)
    assert_same_as_tf(tf, prefix, tensors)
    assert not tensors["float64"].flags.aligned
    assert checkpoint.verify(prefix) == os.path.getsize(f"{prefix}.data-00000-of-00001")


def test_two_shards_match_tf(tf, tmp_path):
    values = {f"v{i}": np.full((i + 1, 3), i, np.float32) for i in range(5)}
    prefix = tf_save(tf, str(tmp_path / "model.ckpt"), values, devices=["/cpu:0", "/cpu:1"])
    assert {e.shard_id for e in entries(prefix).values()} == {0, 1}
    assert_same_as_tf(tf, prefix, checkpoint.read_tensors(prefix))
    assert checkpoint.verify(prefix) == sum(v.nbytes for v in values.values())
    os.remove(f"{prefix}.data-00001-of-00002")
    with pytest.raises(FileNotFoundError, match="data-00001-of-00002 is missing"):
        checkpoint.read_tensors(prefix)


def test_reading_imports_no_tensorflow(gpt2_prefixes):
    code = ("import sys, checkpoint; checkpoint.read_tensors(sys.argv[1]); checkpoint.verify(sys.argv[1]); "
            "assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, gpt2_prefixes[12]], cwd=ROOT, check=True)


# Verifying: every tensor's crc32c, streamed.

def test_verify_reports_progress_in_pieces(gpt2_prefixes, monkeypatch):
    monkeypatch.setattr(checkpoint, "CHUNK", 1000)
    pieces = []
    total = checkpoint.verify(gpt2_prefixes[12], progress=pieces.append)
    assert sum(pieces) == total and max(pieces) == 1000


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True))
def test_any_damaged_data_byte_fails_verify_naming_its_tensor(prefix, where):
    path = f"{prefix}.data-00000-of-00001"
    pos = int(where * os.path.getsize(path))
    [name] = [n for n, e in entries(prefix).items() if e.offset <= pos < e.offset + e.size]
    flip_byte(path, pos)
    try:
        checkpoint.read_tensors(prefix)  # the index is fine, and reading does not touch the data
        with pytest.raises(CheckpointError, match=f"{re.escape(path)}: tensor {name} .* fails its crc32c check"):
            checkpoint.verify(prefix)
    finally:
        flip_byte(path, pos)


# Damaged or unsupported files: a CheckpointError that names the file and the tensor.

@pytest.mark.parametrize("missing", ["model.ckpt.index", SHARD])
def test_missing_file(prefix, missing):
    os.remove(os.path.join(os.path.dirname(prefix), missing))
    with pytest.raises(FileNotFoundError, match=f"{missing} is missing.*download it again"):
        checkpoint.read_tensors(prefix)
    with pytest.raises(FileNotFoundError, match=f"{missing} is missing"):
        checkpoint.verify(prefix)


@pytest.mark.parametrize("empty", [False, True])
def test_short_data_file_names_the_tensor_past_its_end(prefix, empty):
    path = f"{prefix}.data-00000-of-00001"
    size = 0 if empty else os.path.getsize(path) - 4
    last = max(entries(prefix).items(), key=lambda item: item[1].offset)[0]
    with open(path, "r+b") as f:
        f.truncate(size)
    name = "model/\\S+" if empty else last  # an empty file fails at whichever tensor comes first
    message = f"{re.escape(path)} is {size} bytes, but tensor {name} needs bytes .* incomplete; delete .* download it again"
    with pytest.raises(CheckpointError, match=message):
        checkpoint.read_tensors(prefix)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.verify(prefix)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_truncated_or_flipped_index_is_refused_or_harmless(prefix, data):
    path = f"{prefix}.index"
    original = open(path, "rb").read()
    expected = {name: array.tobytes() for name, array in checkpoint.read_tensors(prefix).items()}
    if data.draw(st.booleans(), "truncate"):
        damaged = original[:data.draw(st.integers(0, len(original) - 1), "keep")]
    else:
        pos = data.draw(st.integers(0, len(original) - 1), "pos")
        damaged = bytearray(original)
        damaged[pos] ^= 1 << data.draw(st.integers(0, 7), "bit")
    open(path, "wb").write(damaged)
    try:
        tensors = checkpoint.read_tensors(prefix)
    except CheckpointError as e:
        assert str(e).startswith(path) and "download it again" in str(e)
    else:  # the footer's padding is not checked by anyone, TensorFlow included
        assert {name: array.tobytes() for name, array in tensors.items()} == expected
    finally:
        open(path, "wb").write(original)


def test_corrupt_index_block_names_the_file(prefix):
    flip_byte(f"{prefix}.index", 20)
    with pytest.raises(CheckpointError, match=r"model.ckpt.index is not a valid checkpoint index: the block at byte 0 "
                                              r"fails its crc32c check; delete .* and download it again"):
        checkpoint.read_tensors(prefix)


@pytest.mark.parametrize("value, dtype, name", [([1.5, 2.0], "bfloat16", "bfloat16"), (b"text", None, "string")])
def test_unsupported_dtype_names_the_tensor(tf, tmp_path, value, dtype, name):
    prefix = tf_save(tf, str(tmp_path / "model.ckpt"), {"model/wte": np.ones(2, np.float32), "odd": (value, dtype)})
    with pytest.raises(CheckpointError, match=f"model.ckpt.index: tensor odd has TensorFlow dtype {name}, which is not supported"):
        checkpoint.read_tensors(prefix)


def test_partitioned_variable_is_refused(tf, tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.get_variable("p", shape=[4, 3], partitioner=tf.compat.v1.fixed_size_partitioner(2))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(tmp_path / "model.ckpt"))
    with pytest.raises(CheckpointError, match="tensor p is saved in slices"):
        checkpoint.read_tensors(str(tmp_path / "model.ckpt"))


# Index tables written here: snappy-compressed blocks, and headers TensorFlow would not write.

def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def write_table(path, records, kind=0, per_block=5, restart_every=3):
    """Write (key, value) pairs as an SSTable: `per_block` records a block, keys prefix-compressed, blocks
    snappy-compressed by cramjam if kind is 1 (other kinds store the block as is, under that type byte)."""
    import cramjam

    out = bytearray()

    def add_block(records):
        block, restarts, previous = bytearray(), [], b""
        for i, (key, value) in enumerate(records):
            shared = 0
            if i % restart_every:
                shared = len(os.path.commonprefix([previous, key]))
            else:
                restarts.append(len(block))
            block += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
            previous = key
        restarts = restarts or [0]
        block += b"".join(r.to_bytes(4, "little") for r in restarts + [len(restarts)])
        if kind == 1:
            block = bytes(cramjam.snappy.compress_raw(bytes(block)))
        handle = varint(len(out)) + varint(len(block))
        crc = checkpoint.masked(crc32c.crc32c(bytes([kind]), crc32c.crc32c(bytes(block))))
        out.extend(block + bytes([kind]) + crc.to_bytes(4, "little"))
        return handle

    index = [(chunk[-1][0], add_block(chunk)) for chunk in
             (records[i:i + per_block] for i in range(0, len(records), per_block))]
    handles = add_block([]) + add_block(index)
    out += handles.ljust(40, b"\0") + checkpoint.TABLE_MAGIC.to_bytes(8, "little")
    open(path, "wb").write(out)


def rewrite_index(prefix, kind=0, replace=()):
    """Write prefix.index again with our table writer, optionally compressed or with some records replaced."""
    records = dict(checkpoint.table_records(open(f"{prefix}.index", "rb").read()))
    records.update(replace)
    write_table(f"{prefix}.index", sorted(records.items()), kind)


def test_snappy_compressed_index_matches_tf(tf, prefix):
    uncompressed = checkpoint.read_tensors(prefix)
    rewrite_index(prefix, kind=1)
    assert open(f"{prefix}.index", "rb").read().count(b"attn/c_attn") < 12  # keys really are compressed
    tensors = checkpoint.read_tensors(prefix)
    assert_same_as_tf(tf, prefix, tensors)  # TensorFlow reads our snappy table too
    assert {n: a.tobytes() for n, a in tensors.items()} == {n: a.tobytes() for n, a in uncompressed.items()}


# Hand-encoded protobuf: BundleHeaderProto {1: num_shards, 2: endianness, 3: version {1: producer, 2: min_consumer}};
# BundleEntryProto {1: dtype, 2: shape {2: dim {1: size}}, 3: shard_id, 4: offset, 5: size}.
FLOAT32_2 = b"\x08\x01" + b"\x12\x04\x12\x02\x08\x02"  # dtype float32, shape [2]


@pytest.mark.parametrize("kind, replace, message", [
    (2, {}, "unknown compression type 2"),
    (0, {b"": b""}, "says the checkpoint has 0 data files"),
    (0, {b"": b"\x08\x01\x10\x01"}, "written on a big-endian machine"),
    (0, {b"": b"\x08\x01\x1a\x04\x08\x05\x10\x03"}, "needs a tensor bundle reader of version 3"),
    (0, {b"": b"\x08\x01\x12\x00"}, "field 2 of the wrong wire type"),
    (0, {b"model/wpe": FLOAT32_2 + b"\x28\x07"}, "tensor model/wpe has 7 bytes, but shape \\[2\\] of float32 needs 8"),
    (0, {b"model/wpe": FLOAT32_2 + b"\x18\x01\x28\x08"}, "tensor model/wpe is in data file 1 of 1"),
    (0, {b"model/wpe": b"\x08\x01\x12\x02\x10\x02"}, "a number where a message belongs"),
    (0, {b"model/wpe": FLOAT32_2 + b"\x20\xff\xff\xff\xff\x0f\x28\x08"}, "tensor model/wpe needs bytes 4294967295 to"),
])
def test_unreadable_index_says_why(prefix, kind, replace, message):
    rewrite_index(prefix, kind, replace)
    with pytest.raises(CheckpointError, match=f"model.ckpt.*{message}"):
        checkpoint.read_tensors(prefix)


def test_header_for_two_shards_wants_the_second_data_file(prefix):
    rewrite_index(prefix, replace={b"": b"\x08\x02"})
    with pytest.raises(FileNotFoundError, match="model.ckpt.data-00000-of-00002 is missing"):
        checkpoint.read_tensors(prefix)


# Snappy, on its own.

def test_snappy_known_answer():
    # A literal, an overlapping 1-byte-offset copy, a 61-byte literal (its length in an extra byte),
    # a 2-byte-offset copy reaching back before it, and a 4-byte-offset copy repeating the last byte.
    expected = bytearray(b"abcd" + b"abcdabcd" + bytes(range(61)))
    expected += expected[-70:-67]
    expected += expected[-1:] * 2
    compressed = (varint(len(expected)) + b"\x0cabcd" + b"\x11\x04" + b"\xf0\x3c" + bytes(range(61))
                  + b"\x0a" + (70).to_bytes(2, "little") + b"\x07" + (1).to_bytes(4, "little"))
    assert checkpoint.snappy_decompress(compressed) == expected


@pytest.mark.parametrize("compressed, message", [
    (b"\x08\x11\x04", "copies from 4 bytes back, with 0 bytes written"),
    (b"\x08\x0cab", "needs 4 bytes at 2"),
    (b"\x05\x0cabcd", "gives 4 bytes where it says 5"),
    (b"\x80", "varint runs past the end"),
])
def test_bad_snappy_is_refused(compressed, message):
    with pytest.raises(CheckpointError, match=message):
        checkpoint.snappy_decompress(compressed)


@given(st.binary(max_size=3000) | st.lists(st.sampled_from([b"model/h", b"attn", b"\0\0\0\0"])).map(b"".join))
def test_snappy_round_trips_cramjam(data):
    import cramjam

    assert checkpoint.snappy_decompress(bytes(cramjam.snappy.compress_raw(data))) == data


@given(st.binary(max_size=200))
def test_snappy_garbage_raises_only_checkpoint_error(data):
    try:
        checkpoint.snappy_decompress(data)
    except CheckpointError:
        pass
