"""Downloads built to survive home networks (files of 0.5 to 6 GB): OpenAI's (openai_files.py) and the hub's (hub.py).

- each file streams into `<file>.part` and takes its final name only when its size matches the server's
  and its MD5 matches when the server sends one (Content-MD5, or Azure's x-ms-blob-content-md5), or a
  caller's own check (the hub's SHA-256);
- a `.part` left by a broken or interrupted run is continued with an HTTP Range request;
- timeouts, broken connections and 5xx answers are retried with exponential backoff, resuming;
- a name that does not resolve (offline) is final after one retry, a refused connection at once;
- one process at a time downloads into a folder (an fcntl lock); the others wait, then find it there.
"""
import base64
import contextlib
import hashlib
import os
import re
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: downloads go unlocked, see file_lock
    fcntl = None

TIMEOUT = (10, 30)  # seconds to connect, and to wait for each next piece of a body
ATTEMPTS = 5  # tries in a row that may fail before a download gives up; a try that brings bytes restarts the count
BACKOFF = 1.0  # seconds before the first retry; each further retry in a row waits twice as long
CHUNK = 1 << 16  # bytes taken at a time from a response body
READ_CHUNK = 1 << 20  # bytes read at a time when hashing a file on disk


class DownloadError(OSError):
    """A file could not be fetched; nothing partial was left under its final name."""


class CorruptDownloadError(DownloadError):
    """A file arrived with wrong bytes (MD5 or crc32c); it was deleted, so the next run fetches it afresh."""


class DownloadInterrupted(KeyboardInterrupt):
    """Ctrl-C during a download; the message names the .part kept and says that running again resumes it."""


class TransientError(Exception):
    """A failed try that another may fix (5xx, a body cut short); download_file retries it."""


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
                if final(e, failed, attempts):
                    tries = "" if refused(e) else f", {failed} tries in a row"
                    raise DownloadError(f"could not download {url} ({failure_reason(e)}{tries}){kept(part)}") from None
                delay = retry_delay(failed, backoff)
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
                while chunk := f.read(READ_CHUNK):
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


def final(e, failed, attempts):
    """Whether a try that failed with e, the `failed`-th in a row, is the last: a refused connection is
    final at once; a name that does not resolve after one retry (offline, waiting changes nothing; one
    retry covers a resolver's hiccup); anything else after `attempts` tries."""
    return refused(e) or failed >= (min(attempts, 2) if unresolved(e) else attempts)


def retry_delay(failed, backoff):
    """Seconds to wait after the `failed`-th failed try in a row: backoff, 2 * backoff, 4 * backoff... (a minute
    at most)."""
    return min(backoff * 2 ** (failed - 1), 60)


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
