"""Find a HuggingFace hub model in the local HuggingFace cache, fetching into that cache what it lacks.

A hub id is `name` or `org/name`, optionally `@revision` (a branch, a tag or a 40-hex commit; main if none):
`distilgpt2`, `openai-community/gpt2-medium`, `user/some-finetune@v2`. The cache is laid out as
huggingface_hub lays it out, so a model transformers downloaded is found here and one fetched here serves
transformers (one copy on disk):

    $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub
      models--openai-community--gpt2/
        refs/main                           the commit `main` named when last fetched (40 hex digits)
        snapshots/<commit>/config.json      a relative symlink to ../../blobs/<etag>
        blobs/<etag>                        the bytes, named by their hash: the SHA-256 of a file kept in git
                                            LFS (the weights), the git blob SHA-1 of any other
        .no_exist/<commit>/added_tokens.json    empty: the repo has no such file at that commit
      .locks/models--openai-community--gpt2/<etag>.lock

A model whose needed files are all in the snapshot its revision names is used as it is, without the network.
Otherwise each missing file is fetched from $HF_ENDPOINT (default https://huggingface.co) as huggingface_hub
fetches it: a HEAD of <endpoint>/<repo>/resolve/<revision>/<file> answers with the commit (X-Repo-Commit),
the file's hash (X-Linked-Etag on the redirect to the CDN that LFS files get, else ETag) and its size; the
file then streams into blobs/<etag>.incomplete through download.py (resumed, retried, under huggingface_hub's
lock for that blob) and takes its name only once its hash matches. HF_HUB_OFFLINE=1 forbids the network.

We use our own downloader rather than huggingface_hub: it adds no dependency, and download.py already
resumes, retries, locks and verifies; the hub's hashes give it a check for every file.
"""
import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import download
from hf_checkpoint import WEIGHT_FILES, shard_names

ENDPOINT = "https://huggingface.co"
PART = r"[A-Za-z0-9_](?:[\w.-]*[A-Za-z0-9_])?"  # huggingface_hub's repo name rule: no edge "-" or "."
HUB_ID = re.compile(rf"(?P<repo>(?:{PART}/)?{PART})(?:@(?P<revision>[\w./-]+))?")
COMMIT = re.compile(r"[0-9a-f]{40}")
# The hub moved OpenAI's and DistilBERT's GPT-2s under organisations; the old ids redirect there. A copy
# cached under either name serves both.
ALIASES = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
           "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl",
           "distilgpt2": "distilbert/distilgpt2"}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "added_tokens.json", "tokenizer_config.json")


def parse_hub_id(text):
    """"org/name@rev" -> ("org/name", "rev"); "name" -> ("name", "main"); None if text is not a hub id."""
    match = HUB_ID.fullmatch(text)
    if not match or len(match["repo"]) > 96 or "--" in match["repo"] or ".." in match["repo"]:
        return None
    revision = match["revision"] or "main"
    return (match["repo"], revision) if ".." not in revision.split("/") else None


def cache_dir():
    """Where huggingface_hub keeps downloaded repos, from the same variables it reads."""
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(hf_home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def repo_folder(repo_id):
    return cache_dir() / ("models--" + repo_id.replace("/", "--"))


def model_snapshot(hub_id, quiet=False):
    """The snapshot folder holding what a hub model needs (config, weights, tokenizer), fetched if missing."""
    parsed = parse_hub_id(hub_id)
    if parsed is None:
        raise ValueError(f"{hub_id!r} is not a hub id (org/name, optionally @revision)")
    repo_id, revision = parsed
    names = [repo_id] + [other for name, other in ALIASES.items() if repo_id == name] + \
        [name for name, other in ALIASES.items() if repo_id == other]
    for name in names:
        repo = Repo(name, revision, quiet)
        if repo.cached("config.json") and gather(repo, fetch=False):
            return repo.snapshot
    repo = Repo(repo_id, revision, quiet)
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        where = f"snapshot {repo.snapshot}" if repo.commit else f"{repo.folder} (no refs/{revision})"
        raise FileNotFoundError(f"{hub_id} is not complete in the HuggingFace cache ({where}) and HF_HUB_OFFLINE "
                                f"forbids fetching it: unset HF_HUB_OFFLINE, or pass a model folder")
    import requests

    with requests.Session() as repo.session:
        repo.get("config.json", required=True)
        gather(repo, fetch=True)
    return repo.snapshot


def gather(repo, fetch):
    """Whether the snapshot holds the weights and tokenizer files a model needs, fetching them first if `fetch`
    (which raises a FileNotFoundError naming what the repo lacks). Weights cached in one format are used
    rather than fetching another."""
    get = repo.get if fetch else repo.cached
    weights = next((name for name in WEIGHT_FILES if repo.cached(name)), None) or \
        next((name for name in WEIGHT_FILES if get(name)), None)
    where = f"{repo.repo_id} on {repo.endpoint}"
    if weights is None:
        if fetch:
            raise FileNotFoundError(f"{where} holds none of {', '.join(WEIGHT_FILES)}, the formats this engine reads")
        return False
    if weights.endswith(".index.json"):
        shards = sorted(set(shard_names(repo.snapshot / weights).values()))
        if not all([get(shard, required=True) for shard in shards]):
            return False
    found = {name: get(name) for name in TOKENIZER_FILES}
    if found["vocab.json"] and found["merges.txt"] or found["tokenizer.json"]:
        return True
    if fetch:
        raise FileNotFoundError(f"{where} has no tokenizer (vocab.json and merges.txt, or tokenizer.json)")
    return False


class Repo:
    """One repo at one revision in the cache; `get` fetches a file into it (needs `session`, a requests.Session)."""

    def __init__(self, repo_id, revision, quiet=False):
        self.repo_id, self.revision, self.quiet = repo_id, revision, quiet
        self.folder = repo_folder(repo_id)
        self.endpoint = (os.environ.get("HF_ENDPOINT") or ENDPOINT).rstrip("/")
        ref = self.folder / "refs" / revision
        named = ref.read_text(errors="replace").strip() if ref.is_file() else ""
        # A ref that names no commit (empty, cut short, garbage) counts as missing: fetching rewrites it.
        self.commit = revision if COMMIT.fullmatch(revision) else named if COMMIT.fullmatch(named) else None
        self.session = None

    @property
    def snapshot(self):
        return self.folder / "snapshots" / (self.commit or self.revision)

    def url(self, filename):
        return f"{self.endpoint}/{self.repo_id}/resolve/{quote(self.commit or self.revision, safe='')}/{quote(filename)}"

    def cached(self, filename, required=False):
        """The file's path if the snapshot holds it, else None (whether or not it is required)."""
        path = self.snapshot / filename
        return path if self.commit and path.is_file() else None

    def get(self, filename, required=False):
        """The file's path in the snapshot, fetched if need be; None if the repo has no such file."""
        if self.cached(filename):
            return self.snapshot / filename
        if self.commit and (self.folder / ".no_exist" / self.commit / filename).is_file():
            return self.absent(filename, required)
        r = self.head(filename)
        if r.status_code == 404 and r.headers.get("X-Error-Code", "EntryNotFound") == "EntryNotFound":
            commit = r.headers.get("X-Repo-Commit", "")
            if COMMIT.fullmatch(commit):  # huggingface_hub's marker, so that offline runs know it too
                (self.folder / ".no_exist" / commit).mkdir(parents=True, exist_ok=True)
                (self.folder / ".no_exist" / commit / filename).touch()
            return self.absent(filename, required)
        self.check(r, filename)
        etag = (r.headers.get("X-Linked-Etag") or r.headers.get("ETag") or "").removeprefix("W/").strip('"')
        commit = r.headers.get("X-Repo-Commit", "")
        size = r.headers.get("X-Linked-Size") or (None if r.is_redirect else r.headers.get("Content-Length"))
        if not COMMIT.fullmatch(commit) or not re.fullmatch(r"[\w-]+", etag):
            raise download.DownloadError(f"{self.endpoint} answered for {filename} without a commit (X-Repo-Commit) "
                                         f"or hash (ETag): is HF_ENDPOINT a HuggingFace hub?")
        if self.commit is None:
            self.commit = commit
            write_atomically(self.folder / "refs" / self.revision, commit)
        blob = self.folder / "blobs" / etag
        if not blob.is_file():
            lock = self.folder.parent / ".locks" / self.folder.name / f"{etag}.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            blob.parent.mkdir(parents=True, exist_ok=True)
            with download.file_lock(lock, f"downloading {filename} of {self.repo_id}", self.quiet, remove=False):
                if not blob.is_file():
                    download.download_file(self.url(filename), blob, part=f"{blob}.incomplete", quiet=self.quiet,
                                           session=self.session, check=lambda part: mismatch(part, etag, size),
                                           label=filename)
        link(blob, self.snapshot / filename)
        return self.snapshot / filename

    def absent(self, filename, required):
        if required:
            raise FileNotFoundError(f"{self.url(filename)} does not exist: is {self.repo_id} a GPT-2 model?")
        return None

    def head(self, filename):
        """The hub's answer to a HEAD of the file's resolve URL, following redirects within the hub but
        stopping at one that carries the file's metadata (an LFS file's, to its CDN) or leaves the host.
        Timeouts, broken connections and 5xx (and 429) answers are retried as download.py retries them."""
        import requests

        url, failed, hops = self.url(filename), 0, 0
        while True:
            try:
                r = self.session.head(url, headers={"Accept-Encoding": "identity"}, allow_redirects=False,
                                      timeout=download.TIMEOUT)
                if r.status_code >= 500 or r.status_code == 429:
                    raise download.TransientError(f"HTTP {r.status_code} {r.reason}")
            except (download.TransientError, requests.ConnectionError, requests.Timeout) as e:
                failed += 1
                if download.final(e, failed, download.ATTEMPTS):
                    raise download.DownloadError(
                        f"cannot reach {self.endpoint} to fetch {self.repo_id} ({download.failure_reason(e)}), and "
                        f"the HuggingFace cache ({cache_dir()}) does not hold it whole: connect, set HF_ENDPOINT to "
                        f"a mirror, or pass a model folder") from None
                time.sleep(download.retry_delay(failed, download.BACKOFF))
                continue
            target = urljoin(url, r.headers.get("Location", ""))
            if not r.is_redirect or "X-Linked-Etag" in r.headers or urlsplit(target).netloc != urlsplit(url).netloc:
                return r
            url, hops = target, hops + 1
            if hops > 10:
                raise download.DownloadError(f"{self.url(filename)} redirects in a loop")

    def check(self, r, filename):
        """Raise what a failed HEAD means, in the hub's terms (its X-Error-Code header)."""
        if r.ok or r.is_redirect:
            return
        code = r.headers.get("X-Error-Code", "")
        if code == "RevisionNotFound":
            raise FileNotFoundError(f"{self.repo_id} has no revision {self.revision!r} on {self.endpoint}")
        if code in ("RepoNotFound", "GatedRepo") or r.status_code in (401, 403):
            raise FileNotFoundError(
                f"{self.endpoint} has no public model {self.repo_id} (HTTP {r.status_code}"
                f"{', ' + code if code else ''}): check the id; for a gated or private model, download it with "
                f"`hf download {self.repo_id}`, which fills the same cache, then run this again")
        raise download.DownloadError(f"{self.url(filename)}: HTTP {r.status_code} {r.reason}")


def mismatch(part, etag, size):
    """Why a downloaded file is not the one the hub described (size, SHA-256 or git blob SHA-1), or None."""
    actual = os.path.getsize(part)
    if size and size.isdigit() and int(size) != actual:
        return f"{actual:,} bytes where the hub says {int(size):,}"
    if len(etag) == 64:  # an LFS file: its ETag is the SHA-256 of its bytes
        digest = hashlib.sha256()
    elif len(etag) == 40:  # a git file: its ETag is the SHA-1 git names it by ("blob <size>\0" + bytes)
        digest = hashlib.sha1(b"blob %d\0" % actual)
    else:
        return None
    with open(part, "rb") as f:
        while chunk := f.read(download.READ_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != etag.lower():
        return f"its hash is {digest.hexdigest()} where the hub says {etag}"
    return None


def link(blob, pointer):
    """pointer -> blob as a relative symlink, as huggingface_hub makes it (a copy where symlinks fail)."""
    if pointer.is_file():
        return
    pointer.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except FileExistsError:  # a dangling link, or another process linked it meanwhile
        if not pointer.is_file():
            pointer.unlink()
            os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        shutil.copyfile(blob, f"{pointer}.copying")
        os.replace(f"{pointer}.copying", pointer)


def write_atomically(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
