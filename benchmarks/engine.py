"""Speed and memory of this engine beside HuggingFace transformers and a textbook NumPy forward pass.

    python -m benchmarks.engine [--sizes 124M,355M,1558M] [--threads N] [--repeats 3]

The first run writes random-weight checkpoints in OpenAI's layout to models/bench/<size>/ (once,
then cached; see benchmarks/common.py), so the real CLI runs on them unchanged. Every engine runs
in a process of its own, one after another, on the same weights and prompts, with the same thread
count (OpenBLAS's for NumPy, torch's intra-op threads for PyTorch):
- ours: `gpt2.generate` (and `generate_stream` for the first token), greedy, stop_at_eot=False;
- HF: transformers' GPT2LMHeadModel holding the same weights, eval(), torch.inference_mode(),
  `generate(do_sample=False, use_cache=True, min_new_tokens=max_new_tokens)`: its public API, KV cache on;
- textbook: picoGPT's forward pass (below) in float32 with no KV cache, so each new token re-reads
  the whole sequence and computes logits for every position.

Workloads, each timed best of --repeats (the first run is the warm-up):
1. decode: batch 1, a 10-token prompt, 40 new tokens; tokens/s = 40 / time of the whole call, prefill included;
2. time to first token of a 1000-token prompt;
3. a batch of 8 different 10-token prompts, 40 new tokens each; tokens/s = 320 / time of the call;
4. cold start: the CLI, `python gpt2.py PROMPT --n_tokens 1`, from process start to its exit (so an upper
   bound on start to first token), the data file in the page cache;
5. peak RSS of the CLI generating 40 tokens, as a multiple of the checkpoint's data file;
6. decode (as 1) for every size, beside the memory-bandwidth bound: the read bandwidth measured in
   this run divided by the bytes of weights each token reads (every float32 parameter, wte once).
Workloads 2 to 5 run on 124M only. Targets are ratios to HF measured in the same run: absolute
figures move with the machine and its load, so compare only figures from one run.

    python -m benchmarks.engine --profile    # where our engine spends its time on workloads 1-3
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import utils
from benchmarks.common import BENCH_DIR, ROOT, SHAPES, data_bytes, ensure_checkpoint

EOT = 50256
N_NEW = 40  # tokens generated in workloads 1, 3 and 6
BATCH = 8
LONG_PROMPT = 1000
CLI_PROMPT = "Alan Turing theorized that computers would one day become"
# A model small enough for the test to run every workload in seconds; n_ctx is GPT-2's, for the long prompt.
TINY = dict(n_vocab=50257, n_ctx=1024, n_embd=64, n_head=4, n_layer=2)
TARGETS = {"decode": 2.0, "ttft": 0.5, "batch": 2.0, "cold_start": 1.0, "rss": 1.3}


def prompts(n_vocab):
    """The same prompts in every process: (one of 10 tokens, 8 different ones of 10, one of 1000)."""
    rng = np.random.default_rng(0)
    ids = lambda *shape: rng.integers(0, min(n_vocab, EOT), shape).tolist()  # no <|endoftext|>
    return ids(10), ids(BATCH, 10), ids(LONG_PROMPT)


# ---- The textbook baseline: picoGPT's gpt2.py, float32 throughout (python floats and math.sqrt,
# where picoGPT's np.sqrt(...) scalars would turn every activation float64 under NumPy 2).

def gelu(x):  # [...] -> [...]
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def softmax(x):  # [..., n] -> [..., n]
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps=1e-5):  # [n_seq, n_embd] -> [n_seq, n_embd]
    x = (x - np.mean(x, axis=-1, keepdims=True)) / np.sqrt(np.var(x, axis=-1, keepdims=True) + eps)
    return g * x + b


def linear(x, w, b):  # [n_seq, nx] -> [n_seq, nf]
    return x @ w + b


def attention(q, k, v, mask):  # [n_seq, d] x3, [n_seq, n_seq] -> [n_seq, d]
    return softmax(q @ k.T / math.sqrt(q.shape[-1]) + mask) @ v


def mha(x, c_attn, c_proj, n_head):  # [n_seq, n_embd] -> [n_seq, n_embd], one head at a time
    qkv_heads = [np.split(part, n_head, axis=-1) for part in np.split(linear(x, **c_attn), 3, axis=-1)]
    causal_mask = (1 - np.tri(x.shape[0], dtype=x.dtype)) * -1e10
    return linear(np.hstack([attention(q, k, v, causal_mask) for q, k, v in zip(*qkv_heads)]), **c_proj)


def textbook_gpt2(inputs, wte, wpe, blocks, ln_f, n_head):  # [n_seq] -> [n_seq, n_vocab]
    x = wte[inputs] + wpe[range(len(inputs))]
    for block in blocks:
        x = x + mha(layer_norm(x, **block["ln_1"]), **block["attn"], n_head=n_head)
        x = x + linear(gelu(linear(layer_norm(x, **block["ln_2"]), **block["mlp"]["c_fc"])), **block["mlp"]["c_proj"])
    return layer_norm(x, **ln_f) @ wte.T


def textbook_generate(inputs, params, n_head, n_tokens):  # [n_seq] -> [n_tokens]
    """Greedy, the whole sequence through the model for every token: picoGPT's loop."""
    inputs = list(inputs)
    for _ in range(n_tokens):
        inputs.append(int(np.argmax(textbook_gpt2(inputs, **params, n_head=n_head)[-1])))
    return inputs[len(inputs) - n_tokens:]


# ---- Workers: each engine measured in a process of its own (python -m benchmarks.engine --worker ...).

def best_of(fn, repeats):
    """(fastest of `repeats` calls of fn in seconds, fn's last result)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def ours_calls(hparams, params):
    import gpt2

    prompt, batch, long_prompt = prompts(hparams["n_vocab"])
    n_head = hparams["n_head"]
    return {
        "decode": lambda: gpt2.generate(prompt, params, n_head, n_tokens=N_NEW, stop_at_eot=False),
        "ttft": lambda: [next(gpt2.generate_stream(long_prompt, params, n_head, n_tokens=1))],
        "batch": lambda: gpt2.generate(batch, params, n_head, n_tokens=N_NEW, stop_at_eot=False),
    }


def hf_calls(hparams, params, threads):
    import torch
    import transformers
    from tests.conftest import hf_model

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    model = hf_model(hparams, params)
    prompt, batch, long_prompt = prompts(hparams["n_vocab"])

    def generate(rows, n_tokens):
        # The batch's prompts are all 10 tokens, so left padding adds nothing; the mask is passed all the same.
        ids = torch.tensor(rows)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                                 max_new_tokens=n_tokens, min_new_tokens=n_tokens)
        return out[:, ids.shape[1]:].tolist()

    return {
        "decode": lambda: generate([prompt], N_NEW)[0],
        "ttft": lambda: generate([long_prompt], 1)[0],
        "batch": lambda: generate(batch, N_NEW),
    }, model.config._attn_implementation


def textbook_calls(hparams, params):
    prompt, _, long_prompt = prompts(hparams["n_vocab"])
    n_head = hparams["n_head"]
    return {
        "decode": lambda: textbook_generate(prompt, params, n_head, N_NEW),
        "ttft": lambda: textbook_generate(long_prompt, params, n_head, 1),
    }


def blas():
    """(threads, description) of the OpenBLAS NumPy runs on, asked of the loaded library."""
    import ctypes

    paths = [line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.split()[-1]]
    if not paths:
        return None, "not OpenBLAS"
    lib = ctypes.CDLL(paths[0])
    for prefix, suffix in [("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"), ("openblas", "")]:
        if hasattr(lib, f"{prefix}_get_num_threads{suffix}"):
            config = getattr(lib, f"{prefix}_get_config{suffix}")
            config.restype = ctypes.c_char_p
            return getattr(lib, f"{prefix}_get_num_threads{suffix}")(), config().decode()
    return None, Path(paths[0]).name


def probe_bytes(tiny):
    """The bandwidth probe's array: 1 GiB, far beyond the caches; 128 MiB for the tiny run, to save seconds."""
    return 1 << (27 if tiny else 30)


def bandwidth(nbytes, arrays=4):
    """Memory read bandwidth in bytes/s: the best of a one-thread sum and all-thread matrix-vector products (what
    decoding is made of) over nbytes, far beyond the caches. -> {"sum": .., "gemv": .., "best": ..}

    The figure moves with the matrix's shape and, on this VM, with where the array lands in memory (from 34
    to 48 GB/s for one shape), so it is the best over 4 arrays held at once, 6 shapes each, best of 10 each.
    """
    held, sum_seconds, gemv_seconds = [], math.inf, math.inf
    for _ in range(arrays):
        held.append(data := np.ones(nbytes // 4, dtype=np.float32))  # held: each array gets fresh pages
        sum_seconds = min(sum_seconds, best_of(data.sum, 10)[0])
        for rows in (1 << 10, 1 << 14, 1 << 18):
            w = data.reshape(rows, -1)
            x, y = np.ones((1, rows), dtype=np.float32), np.ones(w.shape[1], dtype=np.float32)
            gemv_seconds = min(gemv_seconds, best_of(lambda: x @ w, 10)[0], best_of(lambda: w @ y, 10)[0])
    rates = {"sum": nbytes / sum_seconds, "gemv": nbytes / gemv_seconds}
    return {**rates, "best": max(rates.values())}


def worker(engine, model_dir, workloads, repeats, threads, tiny):
    """Run one engine's workloads and print a JSON line: seconds and generated ids per workload, and the setup."""
    import warnings

    warnings.filterwarnings("ignore")  # torch.from_numpy on read-only memory maps, transformers' notices
    blas_threads, blas_config = blas()
    report = {"numpy": np.__version__, "blas": blas_config, "threads": blas_threads, "results": {}}
    if engine == "bandwidth":
        report["bandwidth"] = bandwidth(probe_bytes(tiny))
        print(json.dumps(report))
        return
    hparams, params = utils.load_hparams_and_params(model_dir)
    if engine == "ours":
        calls = ours_calls(hparams, params)
    elif engine == "textbook":
        calls = textbook_calls(hparams, params)
    else:
        import torch
        import transformers

        calls, attn = hf_calls(hparams, params, threads)
        report.update(torch=torch.__version__, transformers=transformers.__version__, attn=attn,
                      threads=torch.get_num_threads())
    for name in workloads:
        if name in calls:
            seconds, ids = best_of(calls[name], repeats)
            report["results"][name] = {"seconds": seconds, "ids": ids}
    print(json.dumps(report))


def profile(model_dir, workloads, repeats):
    """Our engine's workloads under cProfile: the functions that take the most time of their own."""
    import cProfile
    import io
    import pstats

    hparams, params = utils.load_hparams_and_params(model_dir)
    calls = ours_calls(hparams, params)
    for name in workloads:
        calls[name]()  # warm-up: page the weights in
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.runcall(lambda: [calls[name]() for _ in range(repeats)])
        seconds = (time.perf_counter() - start) / repeats
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
        stats = out.getvalue().split("\n\n", 2)[-1].strip()  # past pstats' own header
        print(f"==== {name}: {seconds:.3f} s a run under the profiler; {repeats} runs, functions by own time\n{stats}\n")


# ---- The driver: checkpoints, one process per engine, the CLI, the table.

def thread_env(threads):
    """The environment of every process it starts: each of NumPy's and torch's thread pools at `threads`."""
    n = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


def worker_command(engine, model_dir, workloads, args):
    return [sys.executable, "-m", "benchmarks.engine", "--worker", engine, "--model_dir", str(model_dir),
            "--workloads", ",".join(workloads), "--repeats", str(args.repeats), "--threads", str(args.threads),
            *(["--tiny"] if args.tiny else [])]


def run_worker(engine, model_dir, workloads, args):
    """One engine's workloads in a fresh process with the benchmark's thread count: its JSON report."""
    return json.loads(run(worker_command(engine, model_dir, workloads, args), args.threads)[1])


# A child's ru_maxrss counts the memory of the process that started it (Linux keeps the peak of the image
# that exec replaces), so the CLI's peak RSS is taken by a small Python process that starts it in turn.
PEAK_RSS = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(os.wait4(p.pid, 0)[2].ru_maxrss)")


def cli_command(model_dir, n_tokens):
    return [sys.executable, str(ROOT / "gpt2.py"), CLI_PROMPT, "--n_tokens", str(n_tokens), "--ignore_eot",
            "--models_dir", str(model_dir.parent), "--model_size", model_dir.name]


def run(command, threads):
    """(wall seconds, last line of stdout) of a command run in the benchmark's environment."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=thread_env(threads), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return seconds, result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def peak_rss(model_dir, n_tokens, threads):
    """Peak RSS in bytes of the CLI generating n_tokens on model_dir."""
    _, out = run([sys.executable, "-c", PEAK_RSS, *cli_command(model_dir, n_tokens)], threads)
    return int(out) * 1024  # ru_maxrss is in KiB on Linux


def cold_start(model_dir, repeats, threads):
    """(seconds with the data file in the page cache: best of repeats, seconds with it evicted first: one run)."""
    from benchmarks.checkpoint import evict_from_page_cache

    warm = min(run(cli_command(model_dir, 1), threads)[0] for _ in range(repeats))
    evict_from_page_cache(model_dir / "model.ckpt.data-00000-of-00001")
    return warm, run(cli_command(model_dir, 1), threads)[0]


def rate(result, n_tokens):
    return n_tokens / result["seconds"]


def fmt(value, unit=""):
    if value is None:
        return "—"
    digits = 3 if abs(value) < 1 else 2 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
    return f"{value:,.{digits}f}{unit}"


def row(workload, ours, hf=None, textbook=None, ratio=None, target="report", met=None):
    met = "—" if met is None else "yes" if met else "NO"
    return [workload, fmt(ours), fmt(hf), fmt(textbook), fmt(ratio, "x"), target, met]


def table(header, rows):
    """A Markdown table, first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                           for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def workload_rows(reports, model_dir, args):
    """Rows 1 to 5: the three engines on 124M, and the CLI's cold start and peak RSS."""
    ours, hf, textbook = (reports[engine]["results"] for engine in ("ours", "hf", "textbook"))
    decode = [rate(r["decode"], N_NEW) for r in (ours, hf, textbook)]
    ttft = [r["ttft"]["seconds"] for r in (ours, hf, textbook)]
    batch = [rate(r["batch"], BATCH * N_NEW) for r in (ours, hf)]
    warm, evicted = cold_start(model_dir, args.repeats, args.threads)
    peak = peak_rss(model_dir, N_NEW, args.threads)
    data = (model_dir / "model.ckpt.data-00000-of-00001").stat().st_size
    return [
        row("1 decode, batch 1, 10-token prompt + 40 (tok/s)", *decode, decode[0] / decode[1],
            f">= {TARGETS['decode']}x HF", decode[0] / decode[1] >= TARGETS["decode"]),
        row("2 time to first token, 1000-token prompt (s)", *ttft, ttft[0] / ttft[1],
            f"<= {TARGETS['ttft']}x HF", ttft[0] / ttft[1] <= TARGETS["ttft"]),
        row("3 batch of 8, 10-token prompts + 40 each (tok/s)", *batch, None, batch[0] / batch[1],
            f">= {TARGETS['batch']}x HF", batch[0] / batch[1] >= TARGETS["batch"]),
        row("4 cold start: CLI start to exit, 1 token (s)", warm, target=f"<= {TARGETS['cold_start']} s",
            met=warm <= TARGETS["cold_start"]),
        row("4b the same, data file evicted from page cache (s)", evicted),
        row(f"5 peak RSS, CLI, 40 tokens (MB; data {data / 1e6:,.0f} MB)", peak / 1e6, ratio=peak / data,
            target=f"<= {TARGETS['rss']}x data", met=peak / data <= TARGETS["rss"]),
    ]


def size_rows(runs, skipped, bandwidth, args):
    """Row 6 for every size, and the rows of the bandwidth-bound table."""
    rows, bounds = [], []
    for size in args.sizes:
        if size in skipped:
            rows.append(row(f"6 decode {size} (tok/s): skipped, see above", None))
            continue
        weights = data_bytes(TINY if args.tiny else SHAPES[size])
        bound = bandwidth / weights
        ours, hf = (rate(runs[size][engine]["results"]["decode"], N_NEW) for engine in ("ours", "hf"))
        rows.append(row(f"6 decode {size} (tok/s)", ours, hf, None, ours / hf))
        bounds.append([size, fmt(weights / 1e6), fmt(bound), fmt(ours), f"{ours / bound:.0%}", fmt(hf), f"{hf / bound:.0%}"])
    return rows, bounds


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", default="124M", help="comma-separated sizes; 124M also runs workloads 2-5")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads for every engine")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each workload; the best counts")
    parser.add_argument("--models_dir", default=str(BENCH_DIR.relative_to(ROOT)),
                        help="where the random checkpoints are kept, one folder per size (relative to the repo)")
    parser.add_argument("--tiny", action="store_true", help="every size 2 layers of n_embd 64 instead, kept in "
                        "<models_dir>/tiny/: the whole run in seconds, for the test")
    parser.add_argument("--profile", action="store_true", help="instead, profile our engine on 124M, workloads 1-3")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    parser.add_argument("--workloads", default="decode,ttft,batch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = args.sizes.split(",")
    if unknown := [s for s in args.sizes if s not in SHAPES]:
        parser.error(f"unknown size {unknown[0]!r}: choose from {', '.join(SHAPES)}")
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
    args.models_dir = ROOT / args.models_dir / ("tiny" if args.tiny else "")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker == "profile":
        return profile(args.model_dir, args.workloads.split(","), args.repeats)
    if args.worker:
        return worker(args.worker, args.model_dir, args.workloads.split(","), args.repeats, args.threads, args.tiny)
    model_dirs, skipped = {}, {}
    for size in args.sizes:
        try:
            model_dirs[size] = ensure_checkpoint(size, args.models_dir, TINY if args.tiny else None)
        except OSError as e:
            skipped[size] = str(e)
            print(f"{size}: skipped: {e}")
    if args.profile:
        subprocess.run(worker_command("profile", model_dirs["124M"], ["decode", "ttft", "batch"], args),
                       cwd=ROOT, env=thread_env(args.threads), check=True)
        return

    bw = run_worker("bandwidth", None, [], args)
    runs = {}
    for size, model_dir in model_dirs.items():
        workloads = ["decode", "ttft", "batch"] if size == "124M" else ["decode"]
        runs[size] = {engine: run_worker(engine, model_dir, workloads, args) for engine in ("ours", "hf")}
        if size == "124M":
            runs[size]["textbook"] = run_worker("textbook", model_dir, ["decode", "ttft"], args)
    rows = workload_rows(runs["124M"], model_dirs["124M"], args) if "124M" in runs else []
    more_rows, bounds = size_rows(runs, skipped, bw["bandwidth"]["best"], args)

    print(machine(next(iter(runs.values()), {}), bw, args))
    print(table(["workload", "ours", "HF", "textbook", "ratio", "target", "met"], rows + more_rows))
    print()
    print(table(["size", "weights (MB)", "bandwidth bound (tok/s)", "ours (tok/s)", "of bound", "HF (tok/s)",
                 "of bound"], bounds))
    print()
    print(notes(runs))


def machine(first, bw, args):
    """The lines above the table: the machine, the libraries, the threads each engine used, the bandwidth."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    ours, hf, textbook = (first.get(engine, {}) for engine in ("ours", "hf", "textbook"))
    bandwidth = {method: f"{value / 1e9:.1f} GB/s" for method, value in bw["bandwidth"].items()}
    return "\n".join([
        f"machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, numpy {bw['numpy']} "
        f"({' '.join(bw['blas'].split())}), torch {hf.get('torch', '—')}, transformers {hf.get('transformers', '—')}",
        f"threads (asked for {args.threads}): ours {ours.get('threads', '—')} and textbook "
        f"{textbook.get('threads', '—')} "
        f"(OpenBLAS), HF {hf.get('threads', '—')} (torch intra-op; attention: {hf.get('attn', '—')}); "
        f"the CLI runs with OPENBLAS_NUM_THREADS={args.threads}",
        f"memory read bandwidth: {bandwidth['best']}, the better of a one-thread sum ({bandwidth['sum']}) and "
        f"{bw['threads']}-thread matrix-vector products ({bandwidth['gemv']}), best over 4 arrays of "
        f"{probe_bytes(args.tiny) >> 20} MiB in 6 shapes",
        f"ours: gpt2.py of {version()}",
        f"best of {args.repeats} runs each; HF: GPT2LMHeadModel.generate(), KV cache on; textbook: picoGPT's "
        f"forward pass in float32, no KV cache{'; TINY MODEL, not GPT-2 124M' if args.tiny else ''}",
        "",
    ])


def version():
    """The commit gpt2.py comes from, and whether it has changed since: figures belong to a version."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    commit = git("log", "-1", "--format=%h %cs")
    if not commit:
        return "unknown"
    return f"commit {commit}{', with uncommitted changes' if git('status', '--porcelain', 'gpt2.py') else ''}"


def notes(runs):
    """Whether the engines chose the same greedy tokens, as they should from the same weights."""
    out = []
    for size, engines in runs.items():
        for name in ("decode", "ttft", "batch"):
            ids = {engine: report["results"][name]["ids"] for engine, report in engines.items() if name in report["results"]}
            differ = [engine for engine in ids if ids[engine] != ids["ours"]]
            if ids:
                out.append(f"{size} {name}: " + (f"{', '.join(differ)} chose other ids than ours" if differ else
                                                 f"the same greedy ids from {', '.join(ids)}"))
    return "\n".join(out)


if __name__ == "__main__":
    main()
