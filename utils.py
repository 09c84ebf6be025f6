"""Fetch OpenAI's GPT-2 checkpoints and load them into nested dicts of float32 arrays.

A model folder, `<models_dir>/<model_size>/`, holds the seven files OpenAI publishes for each size.
The weights are read by our own reader (checkpoint.py), without TensorFlow, as read-only views into
a memory map of the data file, and every shape is checked against hparams.json before use.

Downloads are built to survive home networks (files of 0.5 to 6 GB):
- each file streams into `<file>.part` and takes its final name only when its size matches the server's
  and its MD5 matches when the server sends one (Content-MD5, or Azure's x-ms-blob-content-md5);
- a `.part` left by a broken or interrupted run is continued with an HTTP Range request;
- timeouts, broken connections and 5xx answers are retried with exponential backoff, resuming;
- `checkpoint` lands last, after every tensor passed its crc32c check (checkpoint.verify), so a folder
  that model_is_present() accepts was checked whole; a corrupt download is deleted, not kept;
- one process at a time downloads into a folder (an fcntl lock); the others wait, then find it there.

As a command, for fetching a model before going offline or checking one:
    python utils.py download --model_size 124M [--models_dir models] [--base_url URL]
    python utils.py verify --model_size 124M [--models_dir models]
"""
import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

import checkpoint
import encoder as bpe
from encoder import MODEL_SIZES, check_model_size

try:
    import fcntl
except ImportError:  # Windows: downloads go unlocked, see model_lock
    fcntl = None

FILENAMES = (
    "checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
    "model.ckpt.index", "model.ckpt.meta", "vocab.bpe",
)
# Where download_gpt2_files fetches from unless told otherwise; GPT2_BASE_URL overrides it (mirrors, tests).
BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
HPARAMS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")

TIMEOUT = (10, 30)  # seconds to connect, and to wait for each next piece of a body
ATTEMPTS = 5  # tries in a row that may fail before a download gives up; a try that brings bytes restarts the count
BACKOFF = 1.0  # seconds before the first retry; each further retry in a row waits twice as long
CHUNK = 1 << 16
LOCK_NAME = "download.lock"


class DownloadError(OSError):
    """A file could not be fetched; nothing partial was left under its final name."""


class CorruptDownloadError(DownloadError):
    """A file arrived with wrong bytes (MD5 or crc32c); it was deleted, so the next run fetches it afresh."""


class DownloadInterrupted(KeyboardInterrupt):
    """Ctrl-C during a download; the message names the .part kept and says that running again resumes it."""


class TransientError(Exception):
    """A failed try that another may fix (5xx, a body cut short); download_file retries it."""


def download_gpt2_files(model_size, model_dir, base_url=None, *, timeout=TIMEOUT, attempts=ATTEMPTS,
                        backoff=BACKOFF, quiet=False):
    """Fetch the files of `model_size` that model_dir lacks, check the checkpoint; return the names fetched.

    Files come from <base_url>/<model_size>/<name>: base_url, else $GPT2_BASE_URL, else OpenAI's BASE_URL.
    `checkpoint` is fetched last, after every tensor passed its crc32c check, so the folder counts as
    present only once it was checked whole (it is removed first if anything else is missing). A corrupt
    index or data file is deleted and a CorruptDownloadError says so. A second process downloading into
    the same folder waits for the first and then finds the files there (returning []).
    `quiet` turns off the progress bars and notes on stderr.
    """
    import requests

    check_model_size(model_size)
    base_url = (base_url or os.environ.get("GPT2_BASE_URL") or BASE_URL).rstrip("/")
    model_dir = Path(model_dir)
    if model_is_present(model_dir):  # asked again below, under the lock; this spares a read-only folder the lock
        return []
    model_dir.mkdir(parents=True, exist_ok=True)
    with model_lock(model_dir, quiet), requests.Session() as session:
        if model_is_present(model_dir):  # another process finished it while this one waited
            return []
        (model_dir / "checkpoint").unlink(missing_ok=True)
        names = [name for name in FILENAMES if name != "checkpoint" and not (model_dir / name).is_file()]
        for name in [*names, "checkpoint"]:
            if name == "checkpoint":
                verify_download(model_dir, quiet)
            try:
                download_file(f"{base_url}/{model_size}/{name}", model_dir / name, timeout=timeout,
                              attempts=attempts, backoff=backoff, quiet=quiet, session=session)
            except CorruptDownloadError:
                raise
            except DownloadError as e:
                raise DownloadError(
                    f"{e}; if this machine is offline, put OpenAI's GPT-2 {model_size} files "
                    f"({', '.join(FILENAMES)}) in {model_dir}/"
                ) from None
    return [*names, "checkpoint"]


@contextlib.contextmanager
def model_lock(model_dir, quiet=False):
    """Hold model_dir/download.lock: another process that asks meanwhile says it is waiting, and waits.

    fcntl.flock is released by the OS when its holder exits or dies, so a killed download never leaves
    the folder locked. The lock file is removed on release while still locked; a waiter that wakes up
    holding the removed file sees it is no longer the one at the path and locks afresh.
    Where fcntl is missing (Windows) nothing is locked: run one download per folder at a time there.
    """
    if fcntl is None:
        yield
        return
    path = Path(model_dir) / LOCK_NAME
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    say(f"another process is downloading into {model_dir} (it holds {path}); waiting for it", quiet)
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if is_file_at(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def is_file_at(fd, path):
    """True when the open file fd is the file at path (not one removed from there meanwhile)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def download_file(url, path, *, timeout=TIMEOUT, attempts=ATTEMPTS, backoff=BACKOFF, quiet=False, session=None):
    """Stream url into path via path + ".part", continuing a .part an earlier run left.

    The final name appears only when the size matches the server's and the MD5 matches if it sends one.
    Timeouts, broken connections and 5xx (and 408, 429) answers are retried after backoff, 2 * backoff,
    4 * backoff... seconds (at most a minute), resuming from the bytes in hand; after `attempts` failed tries in a row (a try
    that brought bytes restarts the count) a DownloadError says that the .part is kept for the next run.
    A 4xx or a refused connection fails at once, as in curl and wget. `session`: a requests.Session to
    reuse connections.
    """
    import requests
    from requests.exceptions import ChunkedEncodingError

    path, part = Path(path), Path(f"{path}.part")
    digest = PartDigest()
    failed = 0
    try:
        while True:
            before = file_size(part)
            try:
                fetch(session or requests, url, part, digest, timeout, quiet)
                break
            except (TransientError, requests.ConnectionError, requests.Timeout, ChunkedEncodingError) as e:
                failed = 1 if file_size(part) > before else failed + 1
                if refused(e) or failed >= attempts:
                    tries = "" if refused(e) else f", {failed} tries in a row"
                    raise DownloadError(f"could not download {url} ({failure_reason(e)}{tries}){kept(part)}") from None
                delay = min(backoff * 2 ** (failed - 1), 60)
                say(f"{path.name}: {failure_reason(e)}; trying again in {delay:.3g} s", quiet)
                time.sleep(delay)
    except KeyboardInterrupt:
        if not file_size(part):
            raise
        raise DownloadInterrupted(
            f"interrupted: {part} holds {file_size(part):,} bytes; running the same command again resumes it"
        ) from None
    os.replace(part, path)


def fetch(session, url, part, digest, timeout, quiet):
    """One GET of url into part, from where part ends; returns once part holds the whole file, checked.

    Raises TransientError or a requests error for what another try may fix, DownloadError for what it won't.
    A progress bar appears once the server answers: a failure to connect prints nothing but its error.
    """
    from tqdm import tqdm

    offset = file_size(part)
    headers = {"Accept-Encoding": "identity"}  # the bytes as stored, so sizes and MD5s are the server's
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as r:
        start, total, file_md5, body_md5 = body_range(r, url, part, offset)
        if offset and not start:
            say(f"{part.name}: the server ignored the Range request, so the file starts over", quiet)
        received, position = hashlib.md5(), start
        name = part.name.removesuffix(".part")
        bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=quiet)
        with open(part, "ab" if start else "wb") as f, bar:
            for chunk in r.iter_content(CHUNK) if r.status_code != 416 else ():
                f.write(chunk)
                digest.append(position, chunk)
                received.update(chunk)
                position += len(chunk)
                bar.update(len(chunk))
    if total is not None and position < total:
        raise TransientError(f"the body stopped at byte {position:,} of {total:,}")
    if total is not None and position > total:
        discard(part, f"{url} sent {position:,} bytes where it announced {total:,}")
    if body_md5:
        check_md5(url, part, body_md5, received.digest())
    if file_md5:
        check_md5(url, part, file_md5, digest.of(part))


def body_range(r, url, part, offset):
    """A response -> (first byte of its body in the file, file size or None, file MD5, body MD5).

    MD5s are the header values (base64) or None. Azure's x-ms-blob-content-md5 is the whole file's even on
    a 206; Content-MD5 is the body's, so the whole file's only on a 200. A 416 means the .part reaches
    the end already (if it is as long as the file) or is longer than the file (it is deleted).
    """
    file_md5 = r.headers.get("x-ms-blob-content-md5")
    if r.status_code == 200:
        length = r.headers.get("Content-Length", "")
        return 0, int(length) if length.isdigit() else None, file_md5 or r.headers.get("Content-MD5"), None
    if r.status_code in (206, 416):
        first, total = content_range(r)
        if r.status_code == 206 and first == offset:
            return offset, total, file_md5, r.headers.get("Content-MD5")
        if r.status_code == 416 and total == offset:
            return offset, offset, file_md5, None
        part.unlink()
        raise TransientError(
            f"HTTP {r.status_code} with Content-Range {r.headers.get('Content-Range')!r} when asked from byte "
            f"{offset:,}; starting over"
        )
    if r.status_code >= 500 or r.status_code in (408, 429):
        raise TransientError(f"HTTP {r.status_code} {r.reason}")
    raise DownloadError(
        f"could not download {url} (HTTP {r.status_code} {r.reason}): check the address, whose base comes "
        f"from --base_url or GPT2_BASE_URL"
    )


def content_range(r):
    """A response's Content-Range -> (first byte, file size), None where absent or "*".

    "bytes 100-199/1000" -> (100, 1000); "bytes */1000" -> (None, 1000); "bytes 100-199/*" -> (100, None)
    """
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", r.headers.get("Content-Range", ""))
    if not match:
        return None, None
    return tuple(int(n) if n and n != "*" else None for n in match.groups())


class PartDigest:
    """The MD5 of a .part file, updated as bytes are appended and recomputed only when it fell behind.

    The server's MD5 covers the whole file, so a run that resumes another run's .part hashes the bytes
    that were there first.
    """

    def __init__(self):
        self.md5, self.size = hashlib.md5(), 0

    def append(self, position, chunk):
        if position == 0:
            self.md5, self.size = hashlib.md5(), 0
        if position == self.size:
            self.md5.update(chunk)
            self.size += len(chunk)

    def of(self, part):
        """The digest of part's bytes as they are on disk."""
        if self.size != file_size(part):
            with open(part, "rb") as f:
                position = 0
                while chunk := f.read(checkpoint.CHUNK):
                    self.append(position, chunk)
                    position += len(chunk)
        return self.md5.digest()


def check_md5(url, part, expected, md5):
    """Delete part with a CorruptDownloadError unless md5 (a digest) is what the server's MD5 header says."""
    ours = base64.b64encode(md5).decode()
    if expected.strip() not in (ours, md5.hex()):
        discard(part, f"{url} arrived corrupt: the bytes received have MD5 {ours} where the server says {expected}")


def discard(part, problem):
    part.unlink()
    raise CorruptDownloadError(f"{problem}; {part} was deleted, so running the same command again downloads it afresh")


def verify_download(model_dir, quiet=False):
    """checkpoint.verify on a fresh download; if it fails, delete the index and data file before saying so."""
    prefix = Path(model_dir) / "model.ckpt"  # the prefix OpenAI's `checkpoint` names, which lands after this
    try:
        verify_checkpoint(prefix, quiet)
    except checkpoint.CheckpointError as e:
        for name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
            (Path(model_dir) / name).unlink(missing_ok=True)
        problem = str(e).removesuffix(checkpoint.redownload(prefix)).rstrip(":; ")
        raise CorruptDownloadError(
            f"the checkpoint downloaded into {model_dir} is corrupt ({problem}); its index and data file were "
            f"deleted, so running the same command again downloads them afresh"
        ) from None


def verify_checkpoint(prefix, quiet=False):
    """checkpoint.verify with a progress bar over the data file's bytes; returns the number of bytes checked."""
    from tqdm import tqdm

    data = Path(checkpoint.data_path(prefix, 0, 1))
    total = data.stat().st_size if data.is_file() else None
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"checking {data.name}", disable=quiet)
    with bar:
        return checkpoint.verify(str(prefix), bar.update)


def failure_reason(e):
    """A few words for a failed try, instead of a requests exception's nested repr."""
    import requests
    from requests.exceptions import ChunkedEncodingError
    from urllib3.exceptions import NameResolutionError, ReadTimeoutError

    if isinstance(e, TransientError):
        return str(e)
    if isinstance(e, requests.ReadTimeout) or e.args and isinstance(e.args[0], ReadTimeoutError):
        return "the server sent nothing for longer than the read timeout"
    if isinstance(cause(e), NameResolutionError):
        return "the server's name does not resolve (is the network down?)"
    if isinstance(e, requests.Timeout):
        return "no connection within the connect timeout"
    if isinstance(e, ChunkedEncodingError):
        return "the connection broke off mid-file"
    if refused(e):
        return "connection refused: nothing listens at that address"
    return "the connection failed"


def refused(e):
    """True when nothing listens at the server's address: not worth retrying (curl and wget do not either)."""
    return isinstance(getattr(cause(e), "__context__", None), ConnectionRefusedError)


def cause(e):
    """The urllib3 error under a requests ConnectionError (its MaxRetryError's reason), or None."""
    return getattr(e.args[0], "reason", None) if e.args else None


def kept(part):
    size = file_size(part)
    return f"; {part} keeps {size:,} bytes and running the same command again resumes it" if size else ""


def file_size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def say(message, quiet=False):
    """A note on stderr that does not break a progress bar."""
    from tqdm import tqdm

    if not quiet:
        tqdm.write(message, file=sys.stderr)


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
    """The prefix named by model_dir/checkpoint ("model.ckpt" in OpenAI's files), as a path in model_dir."""
    text = (Path(model_dir) / "checkpoint").read_text()
    match = re.search(r'^model_checkpoint_path: "(.*)"', text, re.M)
    if not match:
        raise ValueError(f"{model_dir}/checkpoint does not name a model_checkpoint_path")
    return str(Path(model_dir) / Path(match.group(1)).name)


def model_is_present(model_dir):
    """True when every file is in place under its final name (a .part file never counts).

    download_gpt2_files puts `checkpoint` in place last, after checking every tensor.
    """
    return all((Path(model_dir) / name).is_file() for name in FILENAMES)


def load_encoder_hparams_and_params(model_size, models_dir):
    """(encoder, hparams, params) for a GPT-2 size, downloading its files first if any is missing."""
    check_model_size(model_size)
    model_dir = Path(models_dir) / model_size
    if not model_is_present(model_dir):
        download_gpt2_files(model_size, model_dir)
    return (bpe.get_encoder(model_size, models_dir), *load_hparams_and_params(model_dir))


def load_hparams_and_params(model_dir):
    """(hparams, params) of a model folder, every tensor's shape checked against its hparams.json."""
    hparams = load_hparams(Path(model_dir) / "hparams.json")
    return hparams, load_gpt2_params_from_tf_ckpt(checkpoint_prefix(model_dir), hparams)


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
            fetched = download_gpt2_files(args.model_size, model_dir, args.base_url)
            if fetched:
                print(f"{model_dir}: fetched {', '.join(fetched)}; every tensor passed its crc32c check")
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
