"""Progress bars on stderr (stdout keeps only the report)."""

from __future__ import annotations

import sys
import time

_WIDTH = 28


class Progress:
    """`with Progress("label", total) as bar: bar(done)`; redraws in place on a terminal."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = max(1, total)
        self.done = 0
        self.started = time.monotonic()
        self._tty = sys.stderr.isatty()
        self._last_step = -1

    def __enter__(self) -> Progress:
        self._draw()
        return self

    def __call__(self, done: int) -> None:
        if done == self.done:
            return
        self.done = done
        self._draw()

    def __exit__(self, *exc: object) -> None:
        if self._tty:
            sys.stderr.write("\n")
        elif self._last_step != 10 * min(self.done, self.total) // self.total:
            self._line()
        sys.stderr.flush()

    def _draw(self) -> None:
        if self._tty:
            sys.stderr.write("\r" + self._text())
            sys.stderr.flush()
            return
        # Not a terminal (CI, a pipe): one line per tenth of the way, not a wall of bars.
        step = 10 * min(self.done, self.total) // self.total
        if step != self._last_step:
            self._last_step = step
            self._line()

    def _line(self) -> None:
        sys.stderr.write(self._text() + "\n")
        sys.stderr.flush()

    def _text(self) -> str:
        filled = _WIDTH * min(self.done, self.total) // self.total
        bar = "#" * filled + "." * (_WIDTH - filled)
        elapsed = time.monotonic() - self.started
        return f"  {self.label:<34} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s"


def note(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()
