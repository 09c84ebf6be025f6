"""The --interactive loop: one prompt per line of stdin, each answered as it is read, until EOF.

At a terminal: readline where the platform has it (arrow keys edit the line and recall earlier prompts),
Ctrl-C stops the generation under way and comes back to the prompt, Ctrl-C on a line being typed drops
that line, and Ctrl-D or Ctrl-C at an empty prompt quits. From a pipe or file: every input line gives
exactly one line on stdout, an empty one when the line is blank or fails (its error goes to stderr), so
outputs line up with inputs.
"""
import contextlib
import signal
import sys

HINT = "Type a prompt and press Enter. Ctrl-C stops a generation; Ctrl-D, or Ctrl-C at an empty prompt, quits."
TICK = 0.1  # seconds between the wake-ups that let readline see a Ctrl-C (see ticking)


def run(respond, program):
    """Call respond(line) for each line read from stdin; a ValueError it raises is reported, and the loop goes on.

    respond prints the answer to one line, ending with a newline; `program` names it in error messages.
    """
    terminal = sys.stdin.isatty()
    readline = None
    if terminal:
        try:
            import readline  # once imported, input() edits the line and keeps a history
        except ImportError:  # e.g. Windows: plain input() still works
            pass
        print(HINT, file=sys.stderr)
    while True:
        try:
            with ticking() if readline else contextlib.nullcontext():
                line = input("> " if terminal and sys.stdout.isatty() else "")
        except EOFError:  # Ctrl-D, or the end of piped input
            if terminal:
                print()  # so that the shell's prompt starts on a line of its own
            return
        except KeyboardInterrupt:
            print()
            if readline and readline.get_line_buffer():  # drop the line being typed, as a shell does
                continue
            return
        if not line.strip():
            if not terminal:
                print()
            continue
        try:
            respond(line)
        except ValueError as e:
            if not terminal:
                print(flush=True)  # this line's (empty) answer, before the error, so the two streams line up
            print(f"{program}: error: {e}", file=sys.stderr)
        except KeyboardInterrupt:
            if not terminal:
                raise
            print()  # ends the continuation cut short; the next prompt follows


@contextlib.contextmanager
def ticking():
    """A SIGALRM that does nothing, every TICK seconds, while readline waits for a line.

    CPython's readline loop looks for a pending Ctrl-C only when its select() is interrupted, so a Ctrl-C
    that lands while readline is busy (drawing the prompt, echoing a key, taking in a paste) goes unseen
    until Enter, and then quits instead of dropping the line. The tick interrupts select(), and the Ctrl-C
    takes effect within TICK.
    """
    if not hasattr(signal, "setitimer"):  # Windows, which has no readline either
        yield
        return
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.siginterrupt(signal.SIGALRM, False)  # other system calls resume; select() is interrupted regardless
    signal.setitimer(signal.ITIMER_REAL, TICK, TICK)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
