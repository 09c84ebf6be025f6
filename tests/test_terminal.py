"""`python gpt2.py` at a terminal and in pipes: --interactive driven through a pseudo-terminal (keys in,
screen out), progress bars on a terminal's stderr and never elsewhere, and `| head -1` ending quietly.

Each key goes in once the screen shows that the program is where the key is meant for: keys typed before
readline read them would be dropped by a Ctrl-C (the terminal discards unread input on an interrupt). The
timeouts only guard against a hang, and no send waits a delay first.
"""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pexpect
import pytest

from conftest import ROOT
from test_cli import run_cli

LONG = ("--n_tokens", "100000", "--slide", "--ignore_eot")  # a generation that runs until it is stopped
UP = "\x1b[A"
CTRL_C, CTRL_D = "\x03", "\x04"


@pytest.fixture
def tiny_dir(checkpoints):
    return checkpoints["tiny"][0]


def spawn(*args):
    """`python gpt2.py ...` on a pseudo-terminal of 24 x 100, as a user's shell would start it."""
    env = {**os.environ, "TERM": "xterm"}
    child = pexpect.spawn(sys.executable, [str(ROOT / "gpt2.py"), *map(str, args)], cwd=ROOT, env=env,
                          encoding="utf-8", timeout=60, dimensions=(24, 100))
    child.delaybeforesend = None  # pexpect's default sleeps 50 ms before each send: the order must not rest on it
    return child


def test_interactive_at_a_terminal(tiny_dir):
    child = spawn("--interactive", *LONG, "--models_dir", tiny_dir)
    child.expect_exact("Ctrl-D, or Ctrl-C at an empty prompt, quits.")  # the hint
    child.expect_exact("> ")
    child.send("The dog\r")
    child.expect_exact("The dog\r\n")
    child.expect(r"\S{30}")  # it is generating
    first = child.after
    child.send(CTRL_C)  # stops this generation, not the session
    child.expect_exact("> ")
    assert child.isalive()
    child.send(UP)  # readline: the last prompt comes back, ready to edit
    child.expect_exact("The dog")
    child.send("\r")
    child.expect(r"\S{30}")
    assert child.after == first  # the same prompt again, so the same greedy text
    child.send(CTRL_C)
    child.expect_exact("> ")
    child.send("half a line")
    child.expect_exact("half a line")  # readline's echo: it holds the keys, which a Ctrl-C sent earlier would discard
    child.send(CTRL_C)  # drops the line being typed
    child.expect_exact("> ")
    assert child.isalive()
    child.send(CTRL_C)  # at an empty prompt: quits
    child.expect(pexpect.EOF)
    assert child.before == "\r\n"  # the shell's prompt will start on a line of its own
    child.close()
    assert child.exitstatus == 0
    assert "^[[A" not in first and "Traceback" not in first


def test_ctrl_c_while_readline_takes_in_a_paste_drops_the_line(tiny_dir):
    # A Ctrl-C that lands while readline is busy with keys, not waiting for the next one, must not wait for
    # a further key (and then quit): interactive.ticking.
    child = spawn("--interactive", "--n_tokens", 3, "--models_dir", tiny_dir)
    child.expect_exact("> ")
    child.send("x" * 3000)  # less than the terminal's input buffer holds (4 kB)
    child.expect_exact("x" * 40)  # readline has begun on it
    child.send(CTRL_C)
    child.expect_exact("\r\n> ")
    child.send(CTRL_D)  # the session goes on, with an empty line: Ctrl-D quits
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_d_quits_with_a_newline(tiny_dir):
    child = spawn("--interactive", "--n_tokens", 3, "--models_dir", tiny_dir)
    child.expect_exact("> ")
    child.send(CTRL_D)
    child.expect(pexpect.EOF)
    assert child.before == "\r\n"
    child.close()
    assert child.exitstatus == 0


def run_on_terminal_stderr(*args):
    """(stdout, stderr) of `python gpt2.py ...` whose stderr alone is a terminal (100 columns wide)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen([sys.executable, str(ROOT / "gpt2.py"), *map(str, args)], stdout=subprocess.PIPE,
                               stderr=terminal, text=True)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 1 << 16)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    stdout, _ = process.communicate(timeout=300)
    os.close(controller)
    assert process.returncode == 0
    return stdout, b"".join(chunks).decode()


LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 60  # 600 tokens: 9 windows of the tiny model's 128


@pytest.mark.parametrize(
    "args, bar",
    [((LONG_TEXT, "--score"), "scoring: "), (("Once upon a time", "--n_samples", 3, "--n_tokens", 30, "--seed", 1), "generating: "),
     (("--verify",), "checking model.ckpt.data")],
    ids=["score", "batch", "verify"],
)
def test_progress_bars_on_a_terminal_and_nowhere_else(tiny_dir, args, bar):
    piped = run_cli(*args, "--models_dir", tiny_dir)
    assert piped.returncode == 0, piped.stderr
    if args == ("--verify",):  # its result, and nothing else
        assert piped.stderr.endswith(" bytes of tensors match their crc32c\n") and len(piped.stderr.splitlines()) == 1
    else:
        assert piped.stderr == ""
    stdout, stderr = run_on_terminal_stderr(*args, "--models_dir", tiny_dir)
    assert bar in stderr and "%|" in stderr
    assert stdout == piped.stdout  # the bar changes nothing on stdout


def read_one_line_then_leave(*args):
    """As `python gpt2.py ... | head -1`: read the first line, close the pipe; (that line, return code, stderr)."""
    process = subprocess.Popen([sys.executable, str(ROOT / "gpt2.py"), *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    return line, process.wait(timeout=300), stderr


def test_a_reader_that_leaves_ends_a_stream_quietly(newline_model):
    # The model writes a few words and then newline after newline, for as long as it is let.
    line, returncode, stderr = read_one_line_then_leave("Q: What is 2+2?\nA:", *LONG, "--models_dir", newline_model)
    assert line.strip() and line.endswith("\n")
    assert (returncode, stderr) == (0, "")


def test_a_reader_that_leaves_ends_a_long_table_quietly(tiny_dir, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("hello world " * 2000 + "\n")  # a table of 4,000 lines, 160 kB: more than a pipe holds (64 kB)
    line, returncode, stderr = read_one_line_then_leave("--prompts_file", path, "--score", "--per_token", "--stride", 127,
                                                        "--models_dir", tiny_dir)
    assert line.split() == ["position", "id", "log-prob", "token"]
    assert (returncode, stderr) == (0, "")
