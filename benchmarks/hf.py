"""Loading HuggingFace-format folders: time and memory for float32 and float16 weights, beside transformers.

    python -m benchmarks.hf

The first run writes two random-weight folders shaped like GPT-2 124M with transformers' save_pretrained,
models/bench/hf-124M-float32/ (0.5 GB) and hf-124M-float16/ (0.25 GB), with GPT-2's vocab files, and keeps
them (a folder is written under a temporary name and renamed when complete). Each is read once first, so
the page cache is warm. Then, each in a fresh process:
- weights: hf_checkpoint.load_hf_model (config.json + safetensors -> params), best of 10 (target for
  float32: 0.05 s, memory-mapped, nothing copied), and the first load alone;
- tokenizer: hf_tokenizer.load_hf_encoder; the whole utils.load_model is the two together;
- memory: RSS after loading (anonymous and file-backed), and the peak after a forward pass that reads
  every weight; float16 is converted to float32 as it loads, so its weights cost anonymous memory;
- transformers: GPT2LMHeadModel.from_pretrained on the same folder (float32), time and peak RSS.
"""
import json
import sys

from benchmarks.common import BENCH_DIR, SHAPES, run, written_once

# The probes run as scripts of their own, with their own rss() and best-of loop: importing benchmarks.common
# would add its modules to the memory they measure.
RSS = """
def rss():  # VmHWM is this process's peak (ru_maxrss would carry over the parent's peak across exec)
    fields = dict(line.split(":") for line in open("/proc/self/status"))
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
"""

PROBE = """
import json, sys, time
folder = sys.argv[1]
""" + RSS + """
import gpt2, hf_checkpoint, hf_tokenizer
before = rss()
start = time.perf_counter()
hparams, params = hf_checkpoint.load_hf_model(folder)
first = time.perf_counter() - start
loaded = rss()
start = time.perf_counter()
encoder = hf_tokenizer.load_hf_encoder(folder)
tokenizer = time.perf_counter() - start
gpt2.gpt2([464, 3290], **params, n_head=hparams["n_head"])
touched = rss()
peak = touched["VmHWM"]
best = first
for _ in range(9):
    start = time.perf_counter()
    hf_checkpoint.load_hf_model(folder)
    best = min(best, time.perf_counter() - start)
print(json.dumps(dict(first=first, best=best, tokenizer=tokenizer, before=before, loaded=loaded, touched=touched, peak=peak)))
"""

HF_PROBE = """
import json, sys, time
""" + RSS + """
import torch
from transformers import GPT2LMHeadModel
start = time.perf_counter()
model = GPT2LMHeadModel.from_pretrained(sys.argv[1], dtype=torch.float32)
seconds = time.perf_counter() - start
with torch.no_grad():
    model(torch.tensor([[464, 3290]]))
print(json.dumps(dict(seconds=seconds, peak=rss()["VmHWM"])))
"""


def ensure_folder(dtype):
    """models/bench/hf-124M-<dtype>/: a random GPT-2 124M saved by transformers in `dtype`, written if missing."""
    folder = BENCH_DIR / f"hf-124M-{dtype}"
    if (folder / "model.safetensors").is_file():
        return folder
    from tests.conftest import random_params, write_hf_folder

    print(f"writing a random-weight 124M folder in {dtype} to {folder} (once) ...", flush=True)
    with written_once(folder) as writing:
        write_hf_folder(writing, SHAPES["124M"], random_params(SHAPES["124M"]), dtype)
    return folder


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def measure(probe, folder):
    """The JSON line a probe prints, run from the repo in this process's environment as it is."""
    return json.loads(run([sys.executable, "-c", probe, str(folder)])[1])


def main():
    rows = []
    for dtype in ("float32", "float16"):
        folder = ensure_folder(dtype)
        warm(folder / "model.safetensors")
        file_mb = (folder / "model.safetensors").stat().st_size / 1e6
        ours, theirs = measure(PROBE, folder), measure(HF_PROBE, folder)
        grow = {key: (ours["loaded"][key] - ours["before"][key]) / 1e6 for key in ("RssAnon", "RssFile")}
        rows.append((dtype, file_mb, ours, theirs, grow))
    print(f"{'folder':<8} {'file MB':>8} {'weights s (best)':>17} {'first s':>8} {'tokenizer s':>12} "
          f"{'anon +MB':>9} {'file +MB':>9} {'peak RSS MB':>12} {'HF s':>6} {'HF peak MB':>11}")
    for dtype, file_mb, ours, theirs, grow in rows:
        print(f"{dtype:<8} {file_mb:>8.1f} {ours['best']:>17.4f} {ours['first']:>8.4f} {ours['tokenizer']:>12.3f} "
              f"{grow['RssAnon']:>9.1f} {grow['RssFile']:>9.1f} {ours['peak'] / 1e6:>12.1f} {theirs['seconds']:>6.2f} "
              f"{theirs['peak'] / 1e6:>11.1f}")
    best = rows[0][2]["best"]
    print(f"float32 weights load in {best * 1e3:.1f} ms (target 50 ms: {'met' if best <= 0.05 else 'MISSED'}); "
          f"anon +MB is memory the load allocated, file +MB pages of the mapped file; peak RSS is after a forward pass")


if __name__ == "__main__":
    main()
