"""What the benchmarks share: random-weight checkpoints shaped like GPT-2's sizes, written once and kept.

`ensure_checkpoint("124M")` makes models/bench/124M/ hold OpenAI's seven files (written by
tests/conftest.py's TF1 Saver writer) for random weights of 124M's shape, so the real CLI runs on it
unchanged: `python gpt2.py "..." --models_dir models/bench`. A folder is written under a temporary
name and renamed when complete, so an interrupted write is never mistaken for a checkpoint.
"""
import math
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import checkpoint
import utils

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "models" / "bench"
# hparams.json of each of OpenAI's four sizes.
SHAPES = {
    "124M": dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12),
    "355M": dict(n_vocab=50257, n_ctx=1024, n_embd=1024, n_head=16, n_layer=24),
    "774M": dict(n_vocab=50257, n_ctx=1024, n_embd=1280, n_head=20, n_layer=36),
    "1558M": dict(n_vocab=50257, n_ctx=1024, n_embd=1600, n_head=25, n_layer=48),
}
# A model small enough for the tests to run every workload in seconds; n_ctx is GPT-2's, for the long prompts.
TINY = dict(n_vocab=50257, n_ctx=1024, n_embd=64, n_head=4, n_layer=2)


def data_bytes(hparams):
    """Bytes of float32 weights a checkpoint of this shape holds (its data file's size)."""
    return 4 * sum(math.prod(shape) for shape in utils.checkpoint_shapes(hparams).values())


def is_cached(model_dir, hparams):
    """True when model_dir holds all seven files for `hparams` and every tensor passes its crc32c."""
    if not utils.model_is_present(model_dir):
        return False
    try:
        if utils.load_hparams(Path(model_dir) / "hparams.json") != hparams:
            return False
        checkpoint.verify(utils.checkpoint_prefix(model_dir))
    except (OSError, ValueError):
        return False
    return True


def ensure_checkpoint(model_size, models_dir=BENCH_DIR, hparams=None):
    """models_dir/model_size holding random weights shaped as `hparams` (default: that size's), written if missing.

    Raises OSError, saying how much is needed, when the disk or the memory is too small to write it.
    """
    hparams = SHAPES[model_size] if hparams is None else hparams
    model_dir = Path(models_dir) / model_size
    if is_cached(model_dir, hparams):
        return model_dir
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    need, free = 2.2 * data_bytes(hparams) + 10e6, shutil.disk_usage(model_dir.parent).free  # weights, spilled and written
    if free < need:
        raise OSError(f"writing a random {model_size} checkpoint into {model_dir} needs about {need / 1e9:.1f} GB "
                      f"of disk and {free / 1e9:.1f} GB are free: free some, or pass a --models_dir on a bigger disk")
    need, free = 2 * data_bytes(hparams) + 1e9, available_memory()  # see spilled()
    if free < need:
        raise OSError(f"writing a random {model_size} checkpoint needs about {need / 1e9:.1f} GB of memory and "
                      f"{free / 1e9:.1f} GB are available")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tests.conftest import random_params, write_checkpoint

    print(f"writing a random-weight checkpoint ({hparams['n_layer']} layers, n_embd {hparams['n_embd']}) "
          f"to {model_dir} (once) ...", flush=True)
    with written_once(model_dir) as writing:
        spill = writing.parent / "spill"
        spill.mkdir()
        write_checkpoint(writing.parent, writing.name, hparams, spilled(random_params(hparams), spill))
    return model_dir


@contextmanager
def written_once(folder):
    """The path to write `folder` to: in a temporary folder beside it, renamed to `folder` (replacing a stale or
    partial copy) when the block completes; the temporary folder and anything else in it are removed either way."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-writing-", dir=folder.parent))
    try:
        yield scratch / folder.name
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(scratch / folder.name, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def available_memory():
    """Bytes of memory the kernel says can be had without swapping (cli.memory_available); unlimited where unknown."""
    from cli import memory_available

    available = memory_available()
    return math.inf if available is None else available


def spilled(tree, folder, name="params"):
    """The params dict with every array copied into a memory-mapped .npy file in `folder`.

    TensorFlow's writer holds about 1.7x the weights in memory of its own, on top of the params it
    is given; params that live in the page cache instead of anonymous memory bring the peak from
    about 3.4x the data size to 1.7x (1558M: from 21 GB to 11 GB, on a 24 GB machine).
    """
    if isinstance(tree, dict):
        return {key: spilled(value, folder, f"{name}.{key}") for key, value in tree.items()}
    if isinstance(tree, list):
        return [spilled(value, folder, f"{name}.{i}") for i, value in enumerate(tree)]
    array = np.lib.format.open_memmap(Path(folder) / f"{name}.npy", mode="w+", dtype=tree.dtype, shape=tree.shape)
    array[...] = tree
    return array


# ---- Measuring, for the benchmarks that start one process per engine

def best_of(fn, repeats):
    """(fastest of `repeats` calls of fn in seconds, fn's last result)."""
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def thread_env(threads):
    """The environment for a process of the benchmark: NumPy's and torch's thread pools at `threads` each."""
    n = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


def run(command, threads=None):
    """(wall seconds, last line of stdout) of a command run from the repo in the benchmark's environment
    (thread_env(threads)), or with threads None in this process's environment as it is."""
    start = time.perf_counter()
    env = None if threads is None else thread_env(threads)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{result.stderr}")
    return seconds, result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def verdict(ok):
    """A table's "met" cell: "yes", "NO", or "—" where there is no target (ok None)."""
    return "—" if ok is None else "yes" if ok else "NO"


def markdown_table(header, rows):
    """A Markdown table of strings, the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                           for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def add_run_options(parser):
    """--threads, --repeats, --models_dir and --tiny, as every engine benchmark takes them."""
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads for every engine")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each workload; the best counts")
    parser.add_argument("--models_dir", default=str(BENCH_DIR.relative_to(ROOT)),
                        help="where the random checkpoints are kept, one folder per size (relative to the repo)")
    parser.add_argument("--tiny", action="store_true", help="2 layers of n_embd 64 instead of GPT-2's shapes, kept "
                        "in <models_dir>/tiny/: the whole run in seconds, for the tests")


def check_run_options(parser, args):
    """The options add_run_options made, checked; models_dir becomes the folder the checkpoints are kept in."""
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
    args.models_dir = ROOT / args.models_dir / ("tiny" if args.tiny else "")
    return args
