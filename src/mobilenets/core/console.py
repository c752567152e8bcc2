"""What the command line prints: the ``mobilenets`` logger's messages, on a terminal or a pipe.

Messages go to stdout, warnings and errors to stderr prefixed with ``warning:``. When the reader of
stdout goes away (``mobilenets train … | head -3``), messages are dropped and the work goes on: a
closed pipe must never stop training or lose a model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


def say(message: str) -> None:
    """Progress: the ``mobilenets`` logger at INFO (``-q`` hides it)."""
    logging.getLogger("mobilenets").info(message)


def warn(message: str) -> None:
    """What needs the user's attention: the ``mobilenets`` logger at WARNING (printed as ``warning: …``)."""
    logging.getLogger("mobilenets").warning(message)


class _ConsoleHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.stdout_closed = False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        if stream is sys.stdout and self.stdout_closed:
            return
        try:
            stream.write(message + "\n")
            stream.flush()
        except BrokenPipeError:
            if stream is sys.stdout:
                self.stdout_closed = True
                # Point fd 1 at /dev/null so that later writes (and Python's flush at exit) succeed silently.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # a closed stderr: nothing else can be said
            pass


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Console output for the ``mobilenets`` logger (replacing any earlier console handler of ours)."""
    logger = logging.getLogger("mobilenets")
    for handler in list(logger.handlers):
        if isinstance(handler, _ConsoleHandler):
            logger.removeHandler(handler)
    logger.addHandler(_ConsoleHandler())
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """Silence C++ libraries that print to file descriptors 1 and 2 directly (TensorFlow Lite's converters,
    absl, glog): their log lines are not for users. Python's own streams are flushed first."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """A Ctrl-C inside the block stops the command when the block ends instead of inside it.

    Device converters run Python callbacks from native code (JAX's garbage-collection hook in
    litert-torch, for one) that print a KeyboardInterrupt raised there as "Exception ignored" and carry
    on, and others wrap it as a conversion error: either way the user's Ctrl-C was lost. A conversion
    takes seconds, so waiting for it costs little; a second Ctrl-C stops at once. Outside the main
    thread Python delivers no signals, and the block runs unchanged.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []

    def note(signum: int, frame: object) -> None:
        pressed.append(signum)
        if len(pressed) > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def stdout_console():
    """A rich ``Console`` on stdout whose closed reader (``mobilenets profile … | head -1``) raises
    ``BrokenPipeError``, which the command line turns into a quiet exit 0 as for every other command; rich's
    own handler exits with status 1."""
    from rich.console import Console

    class _PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return _PipeConsole()
