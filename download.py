"""Download OpenAI's GPT-2 files, built to survive home networks (files of 0.5 to 6 GB).

- each file streams into `<file>.part` and takes its final name only when its size matches the server's
  and its MD5 matches when the server sends one (Content-MD5, or Azure's x-ms-blob-content-md5);
- a `.part` left by a broken or interrupted run is continued with an HTTP Range request;
- timeouts, broken connections and 5xx answers are retried with exponential backoff, resuming;
- `checkpoint` lands last, after every tensor passed its crc32c check (checkpoint.verify) and its shape
  matched hparams.json, so a folder that model_is_present() accepts was checked whole; a corrupt download
  is deleted, not kept;
- a name that does not resolve (offline) is final after one retry; a folder that lacks only the vocab
  (encoder.json, vocab.bpe) needs no network: the repo ships it in vocab/, and it is copied in;
- one process at a time downloads into a folder (an fcntl lock); the others wait, then find it there.

`python utils.py download` is the command line for it.
"""
import base64
import contextlib
import hashlib
import os
import re
import shutil
import sys
import time
from pathlib import Path

import checkpoint
from encoder import VOCAB_DIR, check_model_size

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

TIMEOUT = (10, 30)  # seconds to connect, and to wait for each next piece of a body
ATTEMPTS = 5  # tries in a row that may fail before a download gives up; a try that brings bytes restarts the count
BACKOFF = 1.0  # seconds before the first retry; each further retry in a row waits twice as long
CHUNK = 1 << 16
VOCAB = ("encoder.json", "vocab.bpe")  # the same for every size, shipped in vocab/
LOCK_NAME = "download.lock"


class DownloadError(OSError):
    """A file could not be fetched; nothing partial was left under its final name."""


class CorruptDownloadError(DownloadError):
    """A file arrived with wrong bytes (MD5 or crc32c); it was deleted, so the next run fetches it afresh."""


class DownloadInterrupted(KeyboardInterrupt):
    """Ctrl-C during a download; the message names the .part kept and says that running again resumes it."""


class TransientError(Exception):
    """A failed try that another may fix (5xx, a body cut short); download_file retries it."""


def download_gpt2_files(model_size, model_dir, base_url=None, *, check=None, timeout=TIMEOUT, attempts=ATTEMPTS,
                        backoff=BACKOFF, quiet=False):
    """Fetch the files of `model_size` that model_dir lacks, check the checkpoint; return the names fetched.

    Files come from <base_url>/<model_size>/<name>: base_url, else $GPT2_BASE_URL, else OpenAI's BASE_URL.
    `checkpoint` is fetched last, after every tensor passed its crc32c check, so the folder counts as
    present only once it was checked whole (it is removed first if anything else is missing). A corrupt
    index or data file is deleted and a CorruptDownloadError says so. `check(prefix)`, if given, runs
    after the crc32c check and raises a ValueError when the tensors do not fit hparams.json (utils.py
    passes its shape check); hparams.json is then deleted, the odd one out since the index and data
    passed their checksums. A folder that lacks only encoder.json and vocab.bpe gets the shipped ones
    (returning []). A second process downloading into the same folder waits for the first and then
    finds the files there (returning []). `quiet` turns off the progress bars and notes on stderr.
    """
    import requests

    check_model_size(model_size)
    base_url = (base_url or os.environ.get("GPT2_BASE_URL") or BASE_URL).rstrip("/")
    model_dir = Path(model_dir)
    if model_is_present(model_dir):  # asked again below, under the lock; this spares a read-only folder the lock
        return []
    model_dir.mkdir(parents=True, exist_ok=True)
    with model_lock(model_dir, quiet), requests.Session() as session:
        missing = [name for name in FILENAMES if not (model_dir / name).is_file()]
        if set(missing) <= set(VOCAB):  # another process finished it while this one waited, or it lacks only the vocab
            copy_vocab(model_dir, missing)
            return []
        (model_dir / "checkpoint").unlink(missing_ok=True)
        names = [name for name in missing if name != "checkpoint"]
        for name in [*names, "checkpoint"]:
            if name == "checkpoint":
                verify_download(model_dir, quiet, check)
            try:
                download_file(f"{base_url}/{model_size}/{name}", model_dir / name, timeout=timeout,
                              attempts=attempts, backoff=backoff, quiet=quiet, session=session)
            except CorruptDownloadError:
                raise
            except DownloadError as e:
                raise DownloadError(
                    f"{e}; if this machine is offline, run `python utils.py download --model_size {model_size}` on "
                    f"one with a network and copy the {model_size} folder it fills into {model_dir.parent}/ here, "
                    f"or point --models_dir at the folder that holds that copy"
                ) from None
    return [*names, "checkpoint"]


def copy_vocab(model_dir, names):
    """Copy these of encoder.json and vocab.bpe from the repo's vocab/ into model_dir (via .part, then renamed)."""
    for name in names:
        part = Path(model_dir) / f"{name}.part"
        shutil.copyfile(VOCAB_DIR / name, part)
        os.replace(part, Path(model_dir) / name)


def model_lock(model_dir, quiet=False):
    """Hold model_dir/download.lock while downloading into model_dir (see file_lock)."""
    return file_lock(Path(model_dir) / LOCK_NAME, f"downloading into {model_dir}", quiet)


@contextlib.contextmanager
def file_lock(path, doing, quiet=False, remove=True):
    """Hold the lock file at path: another process that asks meanwhile says it is waiting, and waits.

    fcntl.flock is released by the OS when its holder exits or dies, so a killed download never leaves
    the lock held. With `remove`, the lock file is removed on release while still locked; a waiter that
    wakes up holding the removed file sees it is no longer the one at the path and locks afresh.
    huggingface_hub's locks (the filelock package, also flock) leave their files in place: pass
    remove=False for a lock shared with it. Where fcntl is missing (Windows) nothing is locked: run one
    download per folder at a time there. `doing` completes "another process is ..." in the waiting note.
    """
    if fcntl is None:
        yield
        return
    path = Path(path)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    say(f"another process is {doing} (it holds {path}); waiting for it", quiet)
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
        if remove:
            path.unlink(missing_ok=True)
        os.close(fd)


def is_file_at(fd, path):
    """True when the open file fd is the file at path (not one removed from there meanwhile)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def download_file(url, path, *, timeout=TIMEOUT, attempts=ATTEMPTS, backoff=BACKOFF, quiet=False, session=None,
                  part=None, check=None, label=None):
    """Stream url into path via `part` (path + ".part" unless given), continuing a part an earlier run left.

    The final name appears only when the size matches the server's, the MD5 matches if it sends one, and
    `check(part)`, if given, returns None; if it returns a problem instead, the part is deleted and a
    CorruptDownloadError says so. `label` names the file on its progress bar (default: path's name).
    Timeouts, broken connections and 5xx (and 408, 429) answers are retried after backoff, 2 * backoff,
    4 * backoff... seconds (at most a minute), resuming from the bytes in hand; after `attempts` failed tries in a row (a try
    that brought bytes restarts the count) a DownloadError says that the .part is kept for the next run.
    A 4xx or a refused connection fails at once, as in curl and wget; a name that does not resolve, after
    one retry. `session`: a requests.Session to reuse connections.
    """
    import requests
    from requests.exceptions import ChunkedEncodingError

    path, part = Path(path), Path(part or f"{path}.part")
    label = label or path.name
    digest = PartDigest()
    failed = 0
    try:
        while True:
            before = file_size(part)
            try:
                fetch(session or requests, url, part, digest, timeout, quiet, label)
                break
            except (TransientError, requests.ConnectionError, requests.Timeout, ChunkedEncodingError) as e:
                failed = 1 if file_size(part) > before else failed + 1
                # Offline, a name does not resolve and waiting changes nothing; one retry covers a resolver's hiccup.
                if refused(e) or failed >= (min(attempts, 2) if unresolved(e) else attempts):
                    tries = "" if refused(e) else f", {failed} tries in a row"
                    raise DownloadError(f"could not download {url} ({failure_reason(e)}{tries}){kept(part)}") from None
                delay = min(backoff * 2 ** (failed - 1), 60)
                say(f"{label}: {failure_reason(e)}; trying again in {delay:.3g} s", quiet)
                time.sleep(delay)
    except KeyboardInterrupt:
        if not file_size(part):
            raise
        raise DownloadInterrupted(
            f"interrupted: {part} holds {file_size(part):,} bytes; running the same command again resumes it"
        ) from None
    problem = check(part) if check else None
    if problem:
        discard(part, f"{url} arrived corrupt: {problem}")
    os.replace(part, path)


def fetch(session, url, part, digest, timeout, quiet, label):
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
        bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=quiet)
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
        f"from GPT2_BASE_URL (or `python utils.py download --base_url`)"
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


def verify_download(model_dir, quiet=False, check=None):
    """checkpoint.verify on a fresh download, then check(prefix) if given (the shapes against hparams.json).

    If the checksums fail, the index and data file are deleted; if check fails, hparams.json is; then an error says so.
    """
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
    if check is None:
        return
    try:
        check(prefix)
    except ValueError as e:
        (Path(model_dir) / "hparams.json").unlink(missing_ok=True)
        raise CorruptDownloadError(
            f"the checkpoint downloaded into {model_dir} does not fit its hparams.json ({e}); the tensors passed their "
            f"checksums, so hparams.json was deleted, and running the same command again downloads it afresh"
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
    from urllib3.exceptions import ReadTimeoutError

    if isinstance(e, TransientError):
        return str(e)
    if isinstance(e, requests.ReadTimeout) or e.args and isinstance(e.args[0], ReadTimeoutError):
        return "the server sent nothing for longer than the read timeout"
    if unresolved(e):
        return "the server's name does not resolve (is the network down?)"
    if isinstance(e, requests.Timeout):
        return "no connection within the connect timeout"
    if isinstance(e, ChunkedEncodingError):
        return "the connection broke off mid-file"
    if refused(e):
        return "connection refused: nothing listens at that address"
    return "the connection failed"


def unresolved(e):
    """True when the server's name does not resolve: offline, or a wrong host name."""
    from urllib3.exceptions import NameResolutionError

    return isinstance(cause(e), NameResolutionError)


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


def model_is_present(model_dir):
    """True when every file is in place under its final name (a .part file never counts).

    download_gpt2_files puts `checkpoint` in place last, after checking every tensor.
    """
    return all((Path(model_dir) / name).is_file() for name in FILENAMES)
