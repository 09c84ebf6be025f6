"""Checkpoint reading: checkpoint.py against TensorFlow on a random checkpoint shaped like GPT-2 124M.

    python -m benchmarks.checkpoint

The first run writes the checkpoint (about 500 MB, with tests/conftest.py's TF1 Saver writer) to
models/bench/124M/ and keeps it (benchmarks/common.py); later runs reuse it if it passes checkpoint.verify. Prints:
- read_tensors: parse the index and map every tensor (warm page cache, best of 10; target 0.2 s),
- the memory a fresh process gains by opening and then touching every tensor, beside the data size,
- verify: every tensor's crc32c (warm cache, best of 3; then once with the file evicted from the cache),
- TensorFlow: import, and list_variables + load_variable of every tensor (as picoGPT's loader does),
- whether every tensor is bit-identical to TensorFlow's.
"""
import os
import subprocess
import sys
import time
import timeit

import checkpoint
from benchmarks.common import BENCH_DIR, ROOT, ensure_checkpoint

MODEL_DIR = BENCH_DIR / "124M"
PREFIX = str(MODEL_DIR / "model.ckpt")
DATA = f"{PREFIX}.data-00000-of-00001"

# Run in a fresh process, so the figures hold only what opening and touching the tensors costs.
RSS_PROBE = """
import sys, checkpoint

def rss():
    fields = dict(line.split(":") for line in open("/proc/self/status"))
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "RssAnon", "RssFile")}

before = rss()
tensors = checkpoint.read_tensors(sys.argv[1])
opened = rss()
for array in tensors.values():
    array.sum()
touched = rss()
print(*(after[key] - before[key] for after in (opened, touched) for key in before))
"""


def evict_from_page_cache(path):
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def main():
    ensure_checkpoint("124M")
    mb = os.path.getsize(DATA) / 1e6
    tensors = checkpoint.read_tensors(PREFIX)
    print(f"{PREFIX}: {len(tensors)} tensors, data file {mb:.1f} MB")

    read = min(timeit.repeat(lambda: checkpoint.read_tensors(PREFIX), number=1, repeat=10))
    print(f"read_tensors (warm cache, best of 10): {read * 1e3:.1f} ms (target 200 ms: {'met' if read <= 0.2 else 'MISSED'})")

    probe = subprocess.run([sys.executable, "-c", RSS_PROBE, PREFIX], cwd=ROOT, check=True, capture_output=True, text=True)
    rss, anon, file, touched_rss, touched_anon, touched_file = (int(n) / 1e6 for n in probe.stdout.split())
    print(f"RSS growth, opened: +{rss:.1f} MB (anonymous +{anon:.1f}, file-backed +{file:.1f})")
    print(f"RSS growth, every tensor touched: +{touched_rss:.1f} MB (anonymous +{touched_anon:.1f}, "
          f"file-backed +{touched_file:.1f}) for a {mb:.1f} MB data file")

    warm = min(timeit.repeat(lambda: checkpoint.verify(PREFIX), number=1, repeat=3))
    evict_from_page_cache(DATA)
    cold = timeit.timeit(lambda: checkpoint.verify(PREFIX), number=1)
    print(f"verify (warm cache, best of 3): {warm:.2f} s, {mb / warm:.0f} MB/s")
    print(f"verify (file evicted from the page cache first): {cold:.2f} s, {mb / cold:.0f} MB/s")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    start = time.perf_counter()
    import tensorflow as tf

    imported = time.perf_counter()
    reference = {name: tf.train.load_variable(PREFIX, name) for name, _ in tf.train.list_variables(PREFIX)}
    loaded = time.perf_counter()
    print(f"TensorFlow: import {imported - start:.2f} s; list_variables + load_variable of every tensor {loaded - imported:.2f} s")

    same = sum(name in tensors and tensors[name].dtype == array.dtype and tensors[name].shape == array.shape
               and tensors[name].tobytes() == array.tobytes() for name, array in reference.items())
    print(f"bit-identical to tf.train.load_variable: {same} of {len(reference)} tensors"
          f"{'' if same == len(reference) == len(tensors) else ' — MISMATCH'}")
    if same != len(reference) or len(reference) != len(tensors):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
