"""Downloads against a real HTTP server on 127.0.0.1 that breaks on purpose.

The server (stdlib http.server, with Range support) serves the tiny test checkpoint as <url>/124M/<file>
and injects the faults of home networks and flaky mirrors: dropped connections, short bodies, 5xx, 4xx,
corrupted bytes, MD5 headers, ignored Range requests, stalls past the read timeout, bodies held mid-way for
concurrent downloaders and Ctrl-C. Every case must end in a correct model or a clear error, and never
in a folder that a later load takes as complete. No outcome rests on timing: a server that stalls holds the
connection until the client gives up, and one that holds a body waits for the test to let it go on.
"""
import base64
import contextlib
import hashlib
import json
import http.server
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import download
import openai_files
import utils
from conftest import ROOT, SHAPES

DATA = "model.ckpt.data-00000-of-00001"
FETCHED = [name for name in openai_files.FILENAMES if name not in openai_files.VOCAB]  # the vocab is copied in
# A small backoff keeps the suite fast; quiet keeps pytest's output clean. The timeouts only guard against a
# hang: a healthy server on a busy machine must not time out, or the requests a test asserts would change.
FAST = dict(timeout=(10, 10), attempts=3, backoff=0.01, quiet=True)
STALLED = dict(timeout=(10, 0.5))  # against a stall, which lasts until the client hangs up: it always fires
HELD = 16 * download.CHUNK  # a "hold" sends this much: whole chunks, so the client writes all of it to the .part


class FileServer(http.server.ThreadingHTTPServer):
    """Serves the files under `root` with Range support, breaking requests as told.

    faults[name] lists what goes wrong with each next request for that file (None: nothing); once it
    runs out, always.get(name) applies. A fault is (kind, arg):
      ("status", code)     answer with that HTTP status and no file
      ("drop", n)          promise the whole body, send n bytes, reset the connection
      ("short", n)         promise the whole body, send n bytes, close the connection cleanly
      ("stall", n)         send n bytes of the body, then wait until the client hangs up (its read timeout);
                           n=None: not even the headers
      ("hold", n)          send n bytes of the body, then wait until the test sets `release`, then the rest
      ("corrupt", None)    flip the file's middle byte (inside the largest tensor, for the data file)
      ("ignore_range", None)  answer 200 with the whole file even if asked for a range
    md5_header, if set, names the MD5 header sent: "Content-MD5" (of the body as sent, so of the range on a
    206) or "x-ms-blob-content-md5" (always of the whole file, as Azure does). `release` also ends stalls and
    holds at teardown, so that a failed test leaves no handler waiting.
    """

    daemon_threads = True

    def __init__(self, root):
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = Path(root)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.faults, self.always = {}, {}
        self.md5_header = None
        self.release = threading.Event()
        self.log = []  # (file name, first byte asked for or None, status) per request

    def next_fault(self, name):
        queue = self.faults.get(name)
        return (queue.pop(0) if queue else self.always.get(name)) or (None, None)

    def requests_for(self, name):
        return [(first, status) for logged, first, status in self.log if logged == name]

    def handle_error(self, request, client_address):
        pass  # clients that hang up on purpose are not errors here


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        path = server.root / self.path.lstrip("/")
        kind, arg = server.next_fault(path.name)
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        asked = int(match[1]) if match else None
        if kind == "stall" and arg is None:
            server.log.append((path.name, asked, "stalled"))
            self.wait_for_release()
            return
        if kind == "status" or not path.is_file():
            status = arg if kind == "status" else 404
            server.log.append((path.name, asked, status))
            self.send_error(status)
            return
        data = path.read_bytes()
        first = None if kind == "ignore_range" else asked
        if first is not None and first >= len(data):
            server.log.append((path.name, asked, 416))
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[first or 0:]
        server.log.append((path.name, asked, 200 if first is None else 206))
        self.send_response(200 if first is None else 206)
        self.send_header("Content-Length", str(len(body)))
        if first is not None:
            self.send_header("Content-Range", f"bytes {first}-{len(data) - 1}/{len(data)}")
        if server.md5_header:
            md5 = hashlib.md5(body if server.md5_header == "Content-MD5" else data).digest()
            self.send_header(server.md5_header, base64.b64encode(md5).decode())
        self.end_headers()
        if kind == "corrupt" and len(data) // 2 >= (first or 0):
            i = len(data) // 2 - (first or 0)
            body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:]
        self.send_body(body, kind, arg)

    def send_body(self, body, kind, arg):
        try:
            if kind == "hold":
                self.wfile.write(body[:arg])
                if not self.wait_for_release():
                    self.wfile.write(body[arg:])
            elif kind in ("drop", "short", "stall"):
                self.wfile.write(body[:arg])
                if kind == "stall":
                    self.wait_for_release()
                if kind == "drop":  # close at once with a reset (RST), as a broken network does
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def wait_for_release(self):
        """Block until the server's `release` is set, or the client hangs up (then True)."""
        while not self.server.release.wait(0.01):
            if select.select([self.connection], [], [], 0)[0] and not self.connection.recv(1, socket.MSG_PEEK):
                return True
        return False

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(root):
    """A FileServer on 127.0.0.1 serving the folders under root as <server.url>/<folder>/<file>."""
    httpd = FileServer(root)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(checkpoints):
    """A FileServer on 127.0.0.1 serving the tiny model as <server.url>/124M/<file>."""
    with serving(checkpoints["tiny"][0]) as httpd:
        yield httpd


@pytest.fixture
def source(checkpoints):
    """The folder the server serves from: the files a download must reproduce byte for byte."""
    return checkpoints["tiny"][0] / "124M"


@pytest.fixture
def tiny_dir(checkpoints):
    return checkpoints["tiny"][0]


def download_model(server, models_dir, **options):
    return openai_files.download_gpt2_files("124M", Path(models_dir) / "124M", server.url, **{**FAST, **options})


def assert_complete(model_dir, source):
    """model_dir holds the seven files (nothing else: no .part, no lock), each byte for byte the served one."""
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(openai_files.FILENAMES)
    for name in openai_files.FILENAMES:
        assert (model_dir / name).read_bytes() == (source / name).read_bytes(), name
    assert openai_files.model_is_present(model_dir)


def assert_holds_only_the_vocab(model_dir):
    """What a download that fetched nothing leaves: the shipped vocab, copied in before anything is fetched."""
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(openai_files.VOCAB)
    for name in openai_files.VOCAB:
        assert (model_dir / name).read_bytes() == (ROOT / "vocab" / name).read_bytes(), name


def assert_not_complete(model_dir):
    """Nothing that a later load takes as a complete model, and no lock left behind."""
    assert not openai_files.model_is_present(model_dir)
    assert not (model_dir / "checkpoint").exists()
    assert not (model_dir / openai_files.LOCK_NAME).exists()


def write_part(model_dir, source, name, size, flip=None):
    """A .part as an interrupted run leaves it: the file's first `size` bytes (byte `flip` inverted)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    data = bytearray((source / name).read_bytes()[:size])
    if flip is not None:
        data[flip] ^= 0xFF
    (model_dir / f"{name}.part").write_bytes(data)


def test_download_then_load(server, tmp_path, source):
    fetched = download_model(server, tmp_path)
    assert fetched == [name for name in FETCHED if name != "checkpoint"] + ["checkpoint"]
    assert_complete(tmp_path / "124M", source)
    assert sorted(server.log) == sorted((name, None, 200) for name in FETCHED)  # encoder.json, vocab.bpe: from vocab/
    _, hparams, params = utils.load_encoder_hparams_and_params("124M", tmp_path)
    assert hparams == SHAPES["tiny"]


def test_a_present_model_is_not_fetched_again(server, tmp_path):
    download_model(server, tmp_path)
    server.log.clear()
    assert download_model(server, tmp_path) == []
    assert server.log == []


def test_a_part_file_never_counts_as_present(tmp_path, source):
    shutil.copytree(source, tmp_path / "124M")
    (tmp_path / "124M" / DATA).rename(tmp_path / "124M" / f"{DATA}.part")
    assert not openai_files.model_is_present(tmp_path / "124M")


def test_a_folder_missing_its_data_file_is_checked_before_it_counts(server, tmp_path, source):
    # As an older downloader left it: `checkpoint` in place, the data file not. It must not count as
    # present before the data file passed its check, so `checkpoint` is fetched again, last.
    shutil.copytree(source, tmp_path / "124M")
    (tmp_path / "124M" / DATA).unlink()
    assert download_model(server, tmp_path) == [DATA, "checkpoint"]
    assert_complete(tmp_path / "124M", source)


@pytest.mark.parametrize("kind", ["drop", "short"])
def test_a_broken_transfer_resumes_where_it_stopped(server, tmp_path, source, kind):
    server.faults[DATA] = [(kind, 3 << 20), (kind, 2 << 20)]  # cut twice, then served whole
    download_model(server, tmp_path)
    assert_complete(tmp_path / "124M", source)
    requests = server.requests_for(DATA)
    assert [status for _, status in requests] == [200, 206, 206]
    first, second, third = (first for first, _ in requests)
    assert first is None and 0 < second <= 3 << 20 and second < third <= second + (2 << 20)


def test_server_errors_are_retried(server, tmp_path, source):
    server.faults["hparams.json"] = [("status", 500), ("status", 503)]
    download_model(server, tmp_path)
    assert_complete(tmp_path / "124M", source)
    assert server.requests_for("hparams.json") == [(None, 500), (None, 503), (None, 200)]


def test_server_errors_give_up_after_the_attempts(server, tmp_path):
    server.always["hparams.json"] = ("status", 502)
    with pytest.raises(download.DownloadError) as e:
        download_model(server, tmp_path, attempts=3)
    assert "hparams.json (HTTP 502 Bad Gateway, 3 tries in a row)" in str(e.value)
    assert "offline, run `python utils.py download --model_size 124M` on one with a network" in str(e.value)
    assert server.requests_for("hparams.json") == [(None, 502)] * 3
    assert_not_complete(tmp_path / "124M")
    assert not (tmp_path / "124M" / "hparams.json").exists()


def test_a_4xx_is_final(server, tmp_path):
    server.always["model.ckpt.meta"] = ("status", 403)
    with pytest.raises(download.DownloadError, match=r"model.ckpt.meta \(HTTP 403 Forbidden\): check the address"):
        download_model(server, tmp_path, attempts=5)
    assert server.requests_for("model.ckpt.meta") == [(None, 403)]
    assert_not_complete(tmp_path / "124M")


def test_missing_files_on_the_server_leave_only_the_vocab(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_BASE_URL", f"{server.url}/nowhere")
    with pytest.raises(download.DownloadError) as e:
        utils.load_encoder_hparams_and_params("124M", tmp_path)
    assert "HTTP 404 Not Found" in str(e.value) and "GPT2_BASE_URL" in str(e.value)
    assert f"into {tmp_path}/ here" in str(e.value)
    assert_holds_only_the_vocab(tmp_path / "124M")


def test_a_refused_connection_fails_at_once(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again before the download: nothing listens
    slept = []
    monkeypatch.setattr(download.time, "sleep", slept.append)
    with pytest.raises(download.DownloadError, match="connection refused"):
        openai_files.download_gpt2_files("124M", tmp_path / "124M", url, attempts=5, quiet=True)
    assert slept == []  # no backoff: not one retry
    assert_holds_only_the_vocab(tmp_path / "124M")


@pytest.mark.parametrize("sent", [None, HELD], ids=["before-headers", "mid-body"])
def test_a_stalled_server_hits_the_read_timeout_and_is_retried(server, tmp_path, source, sent):
    server.faults[DATA] = [("stall", sent)]
    download_model(server, tmp_path, **STALLED)
    assert_complete(tmp_path / "124M", source)
    # The first two requests only: the short read timeout could also fire on a healthy answer on a busy machine.
    (stalled, status), (resumed_from, again) = server.requests_for(DATA)[:2]
    assert stalled is None and status == ("stalled" if sent is None else 200)
    if sent is None:
        assert (resumed_from, again) == (None, 200)
    else:  # from the bytes in hand, which the stall let through
        assert again == 206 and 0 < resumed_from <= sent


def test_a_server_that_always_stalls_gives_a_clear_error(server, tmp_path, source):
    shutil.copytree(source, tmp_path / "124M")
    (tmp_path / "124M" / "checkpoint").unlink()  # the one file fetched: nothing healthy meets the short read timeout
    server.always["checkpoint"] = ("stall", None)
    with pytest.raises(download.DownloadError, match=r"sent nothing for longer than the read timeout, 2 tries in a row"):
        download_model(server, tmp_path, attempts=2, **STALLED)
    assert server.log == [("checkpoint", None, "stalled")] * 2
    assert_not_complete(tmp_path / "124M")


def test_corrupt_data_fails_its_crc32c_and_is_deleted(server, tmp_path, source, monkeypatch):
    server.always[DATA] = ("corrupt", None)
    with pytest.raises(download.CorruptDownloadError) as e:
        download_model(server, tmp_path)
    message = str(e.value)
    assert "fails its crc32c check" in message and "running the same command again downloads them afresh" in message
    model_dir = tmp_path / "124M"
    assert_not_complete(model_dir)
    assert not any(p.name.startswith("model.ckpt.index") or p.name.startswith(DATA) for p in model_dir.iterdir())
    # The next run, from a mirror that is fine again, fetches what was deleted and ends complete.
    server.always.clear()
    server.log.clear()
    monkeypatch.setenv("GPT2_BASE_URL", server.url)
    utils.load_encoder_hparams_and_params("124M", tmp_path)
    assert sorted(name for name, _, _ in server.log) == sorted([DATA, "model.ckpt.index", "checkpoint"])
    assert_complete(model_dir, source)


@pytest.mark.parametrize("header", ["Content-MD5", "x-ms-blob-content-md5"])
def test_an_md5_mismatch_deletes_the_part(server, tmp_path, header):
    server.md5_header = header
    server.always["hparams.json"] = ("corrupt", None)
    with pytest.raises(download.CorruptDownloadError, match="hparams.json arrived corrupt: the bytes received have MD5"):
        download_model(server, tmp_path)
    assert_not_complete(tmp_path / "124M")
    assert not list((tmp_path / "124M").glob("hparams.json*"))


@pytest.mark.parametrize("header", ["Content-MD5", "x-ms-blob-content-md5"])
def test_md5_checks_survive_a_resume(server, tmp_path, source, header):
    # x-ms-blob-content-md5 on the 206 is the whole file's: the bytes before the cut must be in the hash.
    # Content-MD5 on a 206 is the range's: it must not be compared with the whole file's.
    server.md5_header = header
    server.faults[DATA] = [("drop", 3 << 20)]
    download_model(server, tmp_path)
    assert_complete(tmp_path / "124M", source)
    assert [status for _, status in server.requests_for(DATA)] == [200, 206]


@pytest.mark.parametrize(
    "header, error",
    [(None, None), ("x-ms-blob-content-md5", "arrived corrupt: the bytes received have MD5"),
     ("Content-MD5", "fails its crc32c check")],
)
def test_a_part_left_by_another_run_with_a_corrupt_byte(server, tmp_path, source, header, error):
    # The whole-file MD5 covers the bytes already in the .part; a range's MD5 cannot, and the crc32c
    # check after landing catches what it misses.
    server.md5_header = header
    model_dir = tmp_path / "124M"
    write_part(model_dir, source, DATA, 4 << 20, flip=None if error is None else 1 << 20)
    if error is None:
        download_model(server, tmp_path)
        assert_complete(model_dir, source)
    else:
        with pytest.raises(download.CorruptDownloadError, match=error):
            download_model(server, tmp_path)
        assert_not_complete(model_dir)
        assert not list(model_dir.glob(f"{DATA}*"))
    assert server.requests_for(DATA) == [(4 << 20, 206)]


def test_a_server_that_ignores_range_starts_the_file_over(server, tmp_path, source):
    model_dir = tmp_path / "124M"
    write_part(model_dir, source, DATA, 2 << 20, flip=5)  # appending to this would give a corrupt file
    server.faults[DATA] = [("ignore_range", None)]
    download_model(server, tmp_path)
    assert_complete(model_dir, source)
    assert server.requests_for(DATA) == [(2 << 20, 200)]


def test_a_complete_part_is_taken_on_a_416(server, tmp_path, source):
    model_dir = tmp_path / "124M"
    size = (source / DATA).stat().st_size
    write_part(model_dir, source, DATA, size)
    download_model(server, tmp_path)
    assert_complete(model_dir, source)
    assert server.requests_for(DATA) == [(size, 416)]


def test_a_part_longer_than_the_file_starts_over_on_a_416(server, tmp_path, source):
    model_dir = tmp_path / "124M"
    model_dir.mkdir()
    (model_dir / "hparams.json.part").write_bytes((source / "hparams.json").read_bytes() + b"junk")
    download_model(server, tmp_path)
    assert_complete(model_dir, source)
    size = (source / "hparams.json").stat().st_size
    assert server.requests_for("hparams.json") == [(size + 4, 416), (None, 200)]


def run_cli(*args):
    env = {**os.environ, "COLUMNS": "200"}  # so that argparse does not wrap a default across lines
    return subprocess.run(
        [sys.executable, str(ROOT / "utils.py"), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def start_cli(tmp_path):
    """start_cli(name, *args): `python utils.py ...` in the background, stderr to tmp_path/<name>.err, which can be
    read while it runs. Whatever still runs when the test ends (it failed) is killed."""
    processes = []

    def start(name, *args):
        with open(tmp_path / f"{name}.err", "w") as stderr:
            processes.append(subprocess.Popen([sys.executable, str(ROOT / "utils.py"), *map(str, args)],
                                              stdout=subprocess.PIPE, stderr=stderr, text=True))
        return processes[-1]

    yield start
    for process in processes:
        process.kill()
        process.wait()


def wait_for(condition, *running):
    """Poll until condition() holds, while each process in `running` still runs. The minute only guards against
    a hang: each condition here comes true once the other side gets there, however slow the machine."""
    deadline = time.monotonic() + 60
    while not condition():
        assert all(process.poll() is None for process in running), "a process ended before the condition held"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def finish(process, tmp_path, name):
    """(return code, stdout, stderr) of a process started by start_cli."""
    stdout, _ = process.communicate(timeout=120)
    return process.returncode, stdout, (tmp_path / f"{name}.err").read_text()


def test_two_processes_downloading_the_same_model(server, tmp_path, source, start_cli):
    # The first process stays mid-file, holding the lock, until the second is seen waiting for it. (The first's
    # own read timeout, 30 s, is the CLI's guard against a hang, far beyond the second's start.)
    server.faults[DATA] = [("hold", HELD)]
    command = ("download", "--models_dir", tmp_path, "--base_url", server.url)
    first = start_cli("first", *command)
    wait_for(lambda: (tmp_path / "124M" / f"{DATA}.part").exists(), first)
    second = start_cli("second", *command)
    wait_for(lambda: "waiting" in (tmp_path / "second.err").read_text(), first, second)
    server.release.set()
    code, stdout, stderr = finish(first, tmp_path, "first")
    assert code == 0 and "every tensor passed its crc32c check" in stdout, stderr
    code, stdout, stderr = finish(second, tmp_path, "second")
    assert code == 0, stderr
    assert "another process is downloading into" in stderr and "already holds GPT-2 124M" in stdout
    assert sorted(name for name, _, _ in server.log) == sorted(FETCHED)  # each file fetched once
    assert_complete(tmp_path / "124M", source)


def test_a_killed_downloader_releases_the_lock(server, tmp_path, source, start_cli):
    server.faults[DATA] = [("hold", HELD)]  # the first process stays mid-file until it is killed
    command = ("download", "--models_dir", tmp_path, "--base_url", server.url)
    first = start_cli("first", *command)
    part = tmp_path / "124M" / f"{DATA}.part"
    wait_for(lambda: download.file_size(part) >= HELD, first)
    second = start_cli("second", *command)
    wait_for(lambda: "waiting" in (tmp_path / "second.err").read_text(), first, second)
    first.kill()  # SIGKILL: no cleanup runs, the OS drops the lock
    first.wait()
    code, stdout, stderr = finish(second, tmp_path, "second")
    assert code == 0 and "fetched" in stdout, stderr
    assert server.requests_for(DATA) == [(None, 200), (HELD, 206)]
    assert_complete(tmp_path / "124M", source)


def test_ctrl_c_leaves_a_part_that_the_next_run_resumes(server, tmp_path, source, start_cli):
    # The body stops at HELD bytes for as long as the run lives: it cannot finish before the signal lands.
    server.faults[DATA] = [("hold", HELD)]
    process = start_cli("cli", "download", "--models_dir", tmp_path, "--base_url", server.url)
    part = tmp_path / "124M" / f"{DATA}.part"
    wait_for(lambda: download.file_size(part) >= HELD, process)
    process.send_signal(signal.SIGINT)
    code, stdout, stderr = finish(process, tmp_path, "cli")
    assert code != 0 and "Traceback" not in stderr and stdout == ""
    last = stderr.strip().splitlines()[-1]
    assert last == f"utils.py: interrupted: {part} holds {HELD:,} bytes; running the same command again resumes it"
    assert download.file_size(part) == HELD
    assert_not_complete(tmp_path / "124M")
    download_model(server, tmp_path)
    assert server.requests_for(DATA) == [(None, 200), (HELD, 206)]
    assert_complete(tmp_path / "124M", source)


def test_cli_help_shows_defaults():
    result = run_cli("download", "--help")
    assert result.returncode == 0
    for default in ("(default: 124M)", "(default: models)", f"(default: {openai_files.BASE_URL})"):
        assert default in result.stdout
    assert "(default: models)" in run_cli("verify", "--help").stdout


def test_cli_verify_a_good_model(source):
    result = run_cli("verify", "--models_dir", source.parent)
    assert result.returncode == 0, result.stderr
    size = (source / DATA).stat().st_size
    assert result.stdout == f"{source}: OK, {size:,} bytes of tensors match their crc32c and hparams.json\n"


def test_cli_verify_a_corrupt_model(source, tmp_path):
    shutil.copytree(source, tmp_path / "124M")
    data = tmp_path / "124M" / DATA
    with open(data, "r+b") as f:
        f.seek(data.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    result = run_cli("verify", "--models_dir", tmp_path)
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert "utils.py: error: " in result.stderr.strip().splitlines()[-1] and "fails its crc32c check" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [(("verify",), "lacks checkpoint, encoder.json"), (("download", "--model_size", "7B"), "invalid choice: '7B'")],
)
def test_cli_user_errors_are_one_line(tmp_path, args, message):
    result = run_cli(*args, "--models_dir", tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr
    if args[0] == "verify":
        assert len(result.stderr.strip().splitlines()) == 1
        assert "`python utils.py download --model_size 124M" in result.stderr


def run_gpt2(*args, base_url):
    """`python gpt2.py ...` fetching from base_url."""
    env = {**os.environ, "GPT2_BASE_URL": base_url}
    return subprocess.run([sys.executable, str(ROOT / "gpt2.py"), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


UNRESOLVABLE = "http://gpt2-models.invalid"  # .invalid never resolves (RFC 6761): as offline


def test_a_name_that_does_not_resolve_is_final_after_one_retry(tmp_path):
    with pytest.raises(download.DownloadError) as e:
        openai_files.download_gpt2_files("124M", tmp_path / "124M", UNRESOLVABLE, attempts=5, backoff=0.01, quiet=True)
    assert "the server's name does not resolve (is the network down?), 2 tries in a row" in str(e.value)
    assert_holds_only_the_vocab(tmp_path / "124M")


def test_offline_the_cli_says_how_to_get_the_model(tmp_path):
    result = run_gpt2("hi", "--models_dir", tmp_path, base_url=UNRESOLVABLE)
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    retry, error = result.stderr.splitlines()
    # The vocab ships in vocab/ and is copied in first: what is missing, and named, is the checkpoint.
    assert retry.startswith("hparams.json: the server's name does not resolve") and "trying again in 1 s" in retry
    assert f"{UNRESOLVABLE}/124M/hparams.json (the server's name does not resolve" in error
    assert "2 tries in a row" in error
    assert "encoder.json" not in result.stderr and "vocab.bpe" not in result.stderr
    assert_holds_only_the_vocab(tmp_path / "124M")
    assert "`python utils.py download --model_size 124M`" in error and "--models_dir" in error
    assert "--base_url" not in error  # gpt2.py has no such option


def test_a_folder_without_the_vocab_runs_offline(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir / "124M", tmp_path / "124M")
    for name in ("encoder.json", "vocab.bpe"):
        (tmp_path / "124M" / name).unlink()
    result = run_gpt2("Alan Turing", "--n_tokens", 5, "--models_dir", tmp_path, base_url=UNRESOLVABLE)
    assert result.returncode == 0, result.stderr
    assert result.stdout == run_gpt2("Alan Turing", "--n_tokens", 5, "--models_dir", tiny_dir, base_url=UNRESOLVABLE).stdout
    for name in ("encoder.json", "vocab.bpe"):
        assert (tmp_path / "124M" / name).read_bytes() == (ROOT / "vocab" / name).read_bytes()
    assert openai_files.model_is_present(tmp_path / "124M")


def test_an_hparams_json_that_does_not_fit_is_deleted_before_the_checkpoint_lands(tiny_dir, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(tiny_dir / "124M", served / "124M")
    right = (served / "124M" / "hparams.json").read_text()
    (served / "124M" / "hparams.json").write_text(json.dumps({**json.loads(right), "n_embd": 32}))  # valid, but wrong
    models_dir = tmp_path / "models"
    with serving(served) as server:
        result = run_gpt2("hi", "--n_tokens", 2, "--models_dir", models_dir, base_url=server.url)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        (error,) = [line for line in result.stderr.splitlines() if "error" in line]
        assert "does not fit its hparams.json" in error
        assert "tensor model/wte has shape [50257, 64], but hparams.json implies [50257, 32]" in error
        assert "hparams.json was deleted, and running the same command again downloads it afresh" in error
        model_dir = models_dir / "124M"
        assert not (model_dir / "checkpoint").exists() and not (model_dir / "hparams.json").exists()
        assert (model_dir / DATA).exists()  # it passed its checksums: kept

        (served / "124M" / "hparams.json").write_text(right)  # the mirror is mended
        server.log.clear()
        again = run_gpt2("hi", "--n_tokens", 2, "--models_dir", models_dir, base_url=server.url)
        assert again.returncode == 0, again.stderr
        assert sorted(name for name, _, _ in server.log) == ["checkpoint", "hparams.json"]
    assert_complete(model_dir, tiny_dir / "124M")
