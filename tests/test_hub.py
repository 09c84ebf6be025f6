"""Hub ids: found in a HuggingFace cache offline, fetched into it from a local server that answers as the hub.

FakeHub answers /{repo}/resolve/{revision}/{file} (HEAD and GET) as huggingface.co does: regular files with
their git blob SHA-1 as ETag, LFS files (weights) with a 302 to a CDN (a second server) carrying
X-Linked-Etag (their SHA-256) and X-Linked-Size, X-Repo-Commit on every answer, the hub's X-Error-Code on
errors, and a 307 for a renamed repo. The cache must come out as huggingface_hub lays it out: huggingface_hub
and transformers read what we fetched, and we read what huggingface_hub fetched, with no network.
"""
import hashlib
import http.server
import os
import re
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import download
import gpt2
import hub
import utils
from conftest import ROOT, random_params, write_hf_folder
from test_hf import TINY

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def git_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub(http.server.ThreadingHTTPServer):
    """The hub (kind "hub") or its CDN (kind "cdn"); both log (path, first byte asked for, status)."""

    daemon_threads = True

    def __init__(self, kind, cdn=None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.kind, self.cdn, self.url = kind, cdn, f"http://127.0.0.1:{self.server_address[1]}"
        self.repos, self.renamed, self.blobs = {}, {}, {}  # repo -> {file: bytes}; old id -> new; sha256 -> bytes
        self.wrong_hash, self.drop, self.corrupt, self.log = set(), {}, set(), []
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def add(self, repo_id, folder):
        self.repos[repo_id] = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        for name, data in self.repos[repo_id].items():
            self.cdn.blobs[sha256(data)] = data

    def stop(self):
        self.shutdown()
        self.server_close()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body):
        server = self.server
        match = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", self.path)
        if server.kind == "cdn":
            return self.send_data(server.blobs[self.path[1:]], body, {}, self.path[1:])
        repo, revision, name = match.groups()
        if repo in server.renamed:
            return self.reply(307, {"Location": f"/{server.renamed[repo]}/resolve/{revision}/{name}"})
        if repo not in server.repos:
            return self.reply(401, {"X-Error-Code": "RepoNotFound"})
        if revision not in ("main", COMMIT):
            return self.reply(404, {"X-Error-Code": "RevisionNotFound"})
        files = server.repos[repo]
        if name not in files:
            return self.reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        data, wrong = files[name], name in server.wrong_hash
        if name.endswith((".safetensors", ".bin")):  # stored with git LFS: the CDN serves it
            digest = sha256(b"other bytes" if wrong else data)
            return self.reply(302, {"Location": f"{server.cdn.url}/{sha256(data)}", "X-Linked-Etag": f'"{digest}"',
                                    "X-Linked-Size": str(len(data)), "X-Repo-Commit": COMMIT})
        self.send_data(data, body, {"ETag": f'"{git_sha1(b"x" if wrong else data)}"', "X-Repo-Commit": COMMIT}, name)

    def reply(self, status, headers):
        self.server.log.append((self.path, None, status))
        self.send_response(status)
        for key, value in {**headers, "Content-Length": "0"}.items():
            self.send_header(key, value)
        self.end_headers()

    def send_data(self, data, body, headers, key):
        """data from the byte a Range asks for; a fault registered for `key` breaks it."""
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        first = int(asked[1]) if asked else 0
        self.server.log.append((self.path, first if asked else None, 206 if asked else 200))
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {first}-{len(data) - 1}/{len(data)}")
        for name, value in {**headers, "Content-Length": str(len(data) - first)}.items():
            self.send_header(name, value)
        self.end_headers()
        if not body:
            return
        piece = data[first:]
        if key in self.server.corrupt:
            piece = piece[:-1] + bytes([piece[-1] ^ 1])
        cut = self.server.drop.pop(key, None)
        self.wfile.write(piece if cut is None else piece[:cut])
        self.close_connection = cut is not None

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A model folder (tied, float32, GPT-2's vocab files) and the params written into it."""
    params = random_params(TINY, 21)
    return write_hf_folder(tmp_path_factory.mktemp("source"), TINY, params), params


@pytest.fixture
def fake_hub(source, tmp_path, monkeypatch):
    cdn = FakeHub("cdn")
    server = FakeHub("hub", cdn)
    server.add("org/tiny", source[0])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    yield server
    server.stop()
    cdn.stop()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def logits(model_or_folder, ids=(464, 3290, 318, 257)):
    _, hparams, params = utils.load_model(str(model_or_folder), quiet=True)
    return gpt2.gpt2(list(ids), **params, n_head=hparams["n_head"])


def test_a_fetched_model_is_laid_out_as_huggingface_hub_lays_it_out(fake_hub, source, tmp_path, monkeypatch):
    expected = logits(source[0])
    np.testing.assert_array_equal(logits("org/tiny"), expected)
    repo = tmp_path / "cache" / "models--org--tiny"
    assert (repo / "refs" / "main").read_text() == COMMIT
    snapshot = repo / "snapshots" / COMMIT
    for name, data in fake_hub.repos["org/tiny"].items():
        if name == "generation_config.json":
            continue  # not needed, so not fetched
        digest = sha256(data) if name.endswith(".safetensors") else git_sha1(data)
        assert os.readlink(snapshot / name) == f"../../blobs/{digest}", name
        assert (repo / "blobs" / digest).read_bytes() == data
    assert (repo / ".no_exist" / COMMIT / "added_tokens.json").is_file()
    assert not list(repo.rglob("*.incomplete"))
    # The same copy serves huggingface_hub and transformers, offline.
    from huggingface_hub import try_to_load_from_cache
    from transformers import GPT2LMHeadModel

    cache = str(tmp_path / "cache")
    assert try_to_load_from_cache("org/tiny", "model.safetensors", cache_dir=cache) == str(snapshot / "model.safetensors")
    model = GPT2LMHeadModel.from_pretrained("org/tiny", cache_dir=cache, local_files_only=True)
    np.testing.assert_allclose(model(__import__("torch").tensor([[464, 3290, 318, 257]])).logits[0].detach().numpy(),
                               expected, rtol=1e-4, atol=1e-4)
    # Found again with no network, and the server is not asked.
    requests_before = len(fake_hub.log)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    np.testing.assert_array_equal(logits("org/tiny"), expected)
    np.testing.assert_array_equal(logits(f"org/tiny@{COMMIT}"), expected)
    assert len(fake_hub.log) == requests_before


def test_a_cache_huggingface_hub_filled_is_found_offline(fake_hub, source, tmp_path, monkeypatch):
    from huggingface_hub import hf_hub_download

    fake_hub.add("openai-community/gpt2", source[0])
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
        hf_hub_download("openai-community/gpt2", name, cache_dir=tmp_path / "cache", endpoint=fake_hub.url)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    expected = logits(source[0])
    np.testing.assert_array_equal(logits("openai-community/gpt2"), expected)
    np.testing.assert_array_equal(logits(f"openai-community/gpt2@{COMMIT}"), expected)
    np.testing.assert_array_equal(logits("gpt2"), expected)  # the hub's old id for the same model


def test_a_renamed_repo_is_followed_and_cached_under_the_id_asked_for(fake_hub, source, tmp_path):
    fake_hub.add("openai-community/gpt2", source[0])
    fake_hub.renamed["gpt2"] = "openai-community/gpt2"
    np.testing.assert_array_equal(logits("gpt2"), logits(source[0]))
    assert (tmp_path / "cache" / "models--gpt2" / "snapshots" / COMMIT / "model.safetensors").is_file()


def test_sharded_and_pytorch_bin_repos(fake_hub, source, tmp_path):
    import torch

    sharded, bin_only = tmp_path / "sharded", tmp_path / "bin"
    write_hf_folder(sharded, TINY, source[1], max_shard_size="300KB")
    write_hf_folder(bin_only, TINY, source[1])
    state = {k: torch.from_numpy(v.copy()) for k, v in __import__("safetensors.numpy").numpy.load_file(
        bin_only / "model.safetensors").items()}
    torch.save(state, bin_only / "pytorch_model.bin")
    (bin_only / "model.safetensors").unlink()
    fake_hub.add("org/sharded", sharded)
    fake_hub.add("org/bin", bin_only)
    expected = logits(source[0])
    np.testing.assert_array_equal(logits("org/sharded"), expected)
    np.testing.assert_array_equal(logits("org/bin"), expected)
    assert (tmp_path / "cache" / "models--org--bin" / ".no_exist" / COMMIT / "model.safetensors").is_file()


def cdn_requests(fake_hub, data):
    return [(first, status) for path, first, status in fake_hub.cdn.log if path == f"/{sha256(data)}"]


def test_a_broken_transfer_resumes(fake_hub, source):
    data = fake_hub.repos["org/tiny"]["model.safetensors"]
    fake_hub.cdn.drop[sha256(data)] = 100_000
    np.testing.assert_array_equal(logits("org/tiny"), logits(source[0]))
    (first, status), (resumed_from, resumed) = cdn_requests(fake_hub, data)
    assert (first, status, resumed) == (None, 200, 206) and 0 < resumed_from <= 100_000


def test_an_incomplete_blob_left_by_an_earlier_run_is_resumed(fake_hub, source, tmp_path):
    data = fake_hub.repos["org/tiny"]["model.safetensors"]
    blobs = tmp_path / "cache" / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha256(data)}.incomplete").write_bytes(data[:50_000])
    np.testing.assert_array_equal(logits("org/tiny"), logits(source[0]))
    assert cdn_requests(fake_hub, data) == [(50_000, 206)]


@pytest.mark.parametrize("fault, name", [("wrong_hash", "model.safetensors"), ("corrupt", "model.safetensors"),
                                         ("wrong_hash", "config.json"), ("corrupt", "merges.txt")])
def test_bytes_that_do_not_match_the_hubs_hash_are_not_kept(fake_hub, source, tmp_path, fault, name):
    data = fake_hub.repos["org/tiny"][name]
    if fault == "wrong_hash":  # the hub announces a hash the bytes do not have
        fake_hub.wrong_hash.add(name)
    elif name.endswith(".safetensors"):  # a byte flipped on the way from the CDN
        fake_hub.cdn.corrupt.add(sha256(data))
    else:
        fake_hub.corrupt.add(name)
    with pytest.raises(download.CorruptDownloadError, match="arrived corrupt: its hash is [0-9a-f]+ where the hub says"):
        utils.load_model("org/tiny", quiet=True)
    repo = tmp_path / "cache" / "models--org--tiny"
    assert not (repo / "snapshots" / COMMIT / name).exists()
    for blob in (repo / "blobs").iterdir():  # whatever is kept is named by the hash of its bytes
        assert blob.name in (sha256(blob.read_bytes()), git_sha1(blob.read_bytes())), blob.name
    fake_hub.wrong_hash.clear(), fake_hub.corrupt.clear(), fake_hub.cdn.corrupt.clear()
    np.testing.assert_array_equal(logits("org/tiny"), logits(source[0]))  # the next run fetches it afresh


@pytest.mark.parametrize("endpoint, reason, retries", [(None, "connection refused", 0),
                                                       ("http://hub.invalid", "does not resolve", 1)])
def test_an_unreachable_endpoint_gives_one_clear_line(tmp_path, monkeypatch, endpoint, reason, retries):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", endpoint or closed_port_url())
    slept = []  # a refused connection is final at once, a name that does not resolve after one retry (as download.py)
    monkeypatch.setattr(hub.time, "sleep", slept.append)
    with pytest.raises(download.DownloadError) as e:
        utils.load_model("org/tiny", quiet=True)
    assert slept == [download.BACKOFF] * retries
    assert reason in str(e.value) and "\n" not in str(e.value)
    assert "does not hold it whole: connect, set HF_ENDPOINT to a mirror, or pass a model folder" in str(e.value)
    assert not list((tmp_path / "cache").rglob("*")) or not list((tmp_path / "cache").rglob("blobs/*"))


@pytest.mark.parametrize("model, message", [
    ("org/nothing", "there is no folder 'org/nothing', and as a hub id: http://127.0.0.1:"),
    ("org/nothing", "has no public model org/nothing (HTTP 401, RepoNotFound)"),
    ("org/tiny@v9", "org/tiny has no revision 'v9'"),
])
def test_an_unknown_repo_or_revision(fake_hub, model, message):
    with pytest.raises(FileNotFoundError) as e:
        utils.load_model(model, quiet=True)
    assert message in str(e.value)


def test_hf_hub_offline_forbids_fetching(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE forbids fetching it"):
        utils.load_model("org/tiny", quiet=True)
    assert fake_hub.log == []


@pytest.mark.parametrize("ref", ["", "\n", "not a commit\n", COMMIT[:39], "\xff\xfe"])
def test_a_refs_file_that_names_no_commit_is_fetched_again(fake_hub, source, tmp_path, monkeypatch, ref):
    expected = logits(source[0])
    np.testing.assert_array_equal(logits("org/tiny"), expected)
    repo = tmp_path / "cache" / "models--org--tiny"
    (repo / "refs" / "main").write_bytes(ref.encode("latin-1"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"models--org--tiny \(no refs/main\)\) and HF_HUB_OFFLINE forbids"):
        utils.load_model("org/tiny", quiet=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    cdn_before = list(fake_hub.cdn.log)
    np.testing.assert_array_equal(logits("org/tiny"), expected)
    assert (repo / "refs" / "main").read_text() == COMMIT
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == [COMMIT]
    assert fake_hub.cdn.log == cdn_before  # the blobs were in the cache: only the ref was asked again


@pytest.mark.parametrize("text, parsed", [
    ("gpt2", ("gpt2", "main")), ("openai-community/gpt2-medium", ("openai-community/gpt2-medium", "main")),
    ("user/fine_tune.v2@refs/pr/1", ("user/fine_tune.v2", "refs/pr/1")), (f"distilgpt2@{COMMIT}", ("distilgpt2", COMMIT)),
    ("a/b/c", None), ("org--x/y", None), ("-x", None), ("x@../..", None), ("./models", None), ("", None),
])
def test_parse_hub_id(text, parsed):
    assert hub.parse_hub_id(text) == parsed


def test_the_cache_is_where_huggingface_hub_puts_it(monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert hub.cache_dir() == hub.Path("~/.cache/huggingface/hub").expanduser()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub.cache_dir() == tmp_path / "cache"


def test_the_cli_runs_a_hub_model_and_says_in_one_line_when_it_cannot(fake_hub, source, tmp_path):
    command = [sys.executable, str(ROOT / "gpt2.py"), "--model", "org/tiny", "Alan Turing", "--n_tokens", "5"]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=300)
    assert result.returncode == 0, result.stderr
    encoder, hparams, params = utils.load_model(str(source[0]))
    out = gpt2.generate(encoder.encode("Alan Turing"), params, hparams["n_head"], n_tokens=5)
    assert result.stdout == encoder.decode(out) + "\n"
    env = {**os.environ, "HF_ENDPOINT": closed_port_url(), "HF_HUB_CACHE": str(tmp_path / "empty")}
    result = subprocess.run(command[:3] + ["org/other"] + command[4:], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0 and result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "connection refused" in result.stderr
