"""Key presses from a terminal, one at a time, for keyboard teleoperation.

`RawTerminal` puts a terminal in cbreak mode (keys arrive one by one, unechoed; Ctrl-C still
interrupts) and restores it on `close`. `pump_keys` reads it until the quit key, the end of
input, or until told to stop, handing each batch of keys (`rla_wm.control.teleop.parse_keys`)
to a callback.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable

from rla_wm.control.teleop import parse_keys

QUIT, END_OF_INPUT, STOPPED = "quit", "end_of_input", "stopped"


class NotATerminalError(RuntimeError):
    """The file descriptor is not a terminal (e.g. stdin under a launch file is /dev/null)."""


class RawTerminal:
    def __init__(self, fd: int) -> None:
        if not os.isatty(fd):
            raise NotATerminalError(f"file descriptor {fd} is not a terminal")
        import termios
        import tty

        self.fd = fd
        self._saved: list | None = termios.tcgetattr(fd)
        tty.setcbreak(fd)

    def read(self, timeout: float) -> bytes | None:
        """The bytes typed so far; None when nothing came within `timeout` s, b"" at the end of input."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return os.read(self.fd, 64) if ready else None

    def close(self) -> None:
        """Restore the terminal as it was (once; later calls do nothing)."""
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None


def pump_keys(
    terminal: RawTerminal, on_keys: Callable[[list[str]], bool], running: Callable[[], bool], poll: float = 0.1
) -> str:
    """Read keys while `running()`, handing each batch to `on_keys`, which returns True to quit.

    Returns why it stopped: QUIT, END_OF_INPUT or STOPPED. `poll` bounds how long a stop waits.
    """
    while running():
        data = terminal.read(poll)
        if data is None:
            continue
        if not data:
            return END_OF_INPUT
        if on_keys(parse_keys(data)):
            return QUIT
    return STOPPED
