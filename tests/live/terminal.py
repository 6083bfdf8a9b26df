"""A small terminal screen for driving full-screen-ish programs (prompt_toolkit) under pexpect.

prompt_toolkit redraws only the characters that changed, so what a user sees cannot be read off
the raw output stream; and it shows its bottom toolbar only once the terminal has answered a
cursor position request (CPR, ``ESC [ 6 n``). :class:`Terminal` keeps a character grid up to date
from the output (cursor moves, erases, wrapping, scrolling; colours are ignored) and answers CPRs
with the cursor position, as a real terminal would.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pexpect

_CSI = re.compile(r"\x1b\[([?>=]?)([0-9;]*)([@-~])")
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class Screen:
    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.grid = [[" "] * cols for _ in range(rows)]
        self.row = self.col = 0
        self.autowrap = True
        self.saved = (0, 0)
        self._pending = ""

    # -- reading -----------------------------------------------------------------------------

    def lines(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.grid]

    def text(self) -> str:
        return "\n".join(self.lines())

    # -- writing -----------------------------------------------------------------------------

    def feed(self, data: str) -> list[str]:
        """Apply ``data``; return the answers the terminal owes the program (CPR replies)."""
        answers: list[str] = []
        data = self._pending + data
        self._pending = ""
        i = 0
        while i < len(data):
            ch = data[i]
            if ch == "\x1b":
                m = _CSI.match(data, i)
                if m:
                    answer = self._csi(m.group(1), m.group(2), m.group(3))
                    if answer:
                        answers.append(answer)
                    i = m.end()
                    continue
                m = _OSC.match(data, i)
                if m:
                    i = m.end()
                    continue
                rest = data[i:]
                if len(rest) < 3 or (rest.startswith(("\x1b[", "\x1b]")) and len(rest) < 64):
                    self._pending = rest  # an escape sequence cut in two: wait for the rest
                    return answers
                nxt = data[i + 1]
                if nxt == "7":
                    self.saved = (self.row, self.col)
                elif nxt == "8":
                    self.row, self.col = self.saved
                i += 3 if nxt in "()" else 2
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self._linefeed()
            elif ch == "\b":
                self.col = max(0, self.col - 1)
            elif ch == "\t":
                self.col = min(self.cols - 1, (self.col // 8 + 1) * 8)
            elif ch >= " ":
                self._put(ch)
            i += 1
        return answers

    def _put(self, ch: str) -> None:
        if self.col >= self.cols:
            if self.autowrap:
                self.col = 0
                self._linefeed()
            else:
                self.col = self.cols - 1
        self.grid[self.row][self.col] = ch
        self.col += 1

    def _linefeed(self) -> None:
        if self.row == self.rows - 1:
            self.grid.pop(0)
            self.grid.append([" "] * self.cols)
        else:
            self.row += 1

    def _csi(self, private: str, params: str, final: str) -> str | None:
        nums = [int(p) if p else 0 for p in params.split(";")] if params else []
        n = nums[0] if nums and nums[0] else 1
        if private:
            if final in "hl" and params == "7":
                self.autowrap = final == "h"
            return None
        if final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row = min(self.rows - 1, self.row + n)
        elif final == "C":
            self.col = min(self.cols - 1, self.col + n)
        elif final == "D":
            self.col = max(0, min(self.col, self.cols - 1) - n)
        elif final == "G":
            self.col = min(self.cols - 1, n - 1)
        elif final == "d":
            self.row = min(self.rows - 1, n - 1)
        elif final in "Hf":
            row = nums[0] if nums and nums[0] else 1
            col = nums[1] if len(nums) > 1 and nums[1] else 1
            self.row, self.col = min(self.rows, row) - 1, min(self.cols, col) - 1
        elif final == "J":
            mode = nums[0] if nums else 0
            if mode == 0:
                self._erase_line(0)
                for r in range(self.row + 1, self.rows):
                    self.grid[r] = [" "] * self.cols
            elif mode == 1:
                self._erase_line(1)
                for r in range(self.row):
                    self.grid[r] = [" "] * self.cols
            else:
                self.grid = [[" "] * self.cols for _ in range(self.rows)]
        elif final == "K":
            self._erase_line(nums[0] if nums else 0)
        elif final == "n" and params == "6":
            return f"\x1b[{self.row + 1};{min(self.col, self.cols - 1) + 1}R"
        return None

    def _erase_line(self, mode: int) -> None:
        line = self.grid[self.row]
        col = min(self.col, self.cols - 1)
        if mode == 0:
            line[col:] = [" "] * (self.cols - col)
        elif mode == 1:
            line[: col + 1] = [" "] * (col + 1)
        else:
            line[:] = [" "] * self.cols


class Terminal:
    """A pexpect child seen through a :class:`Screen`. Also keeps the raw output (``raw``)."""

    def __init__(self, child: pexpect.spawn, rows: int, cols: int) -> None:
        self.child = child
        self.screen = Screen(rows, cols)
        self.raw = ""

    def pump(self, seconds: float = 0.05) -> bool:
        """Read what the program wrote during up to ``seconds``; False once it has exited."""
        try:
            data = self.child.read_nonblocking(65536, timeout=seconds)
        except pexpect.TIMEOUT:
            return True
        except pexpect.EOF:
            return False
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        self.raw += text
        for answer in self.screen.feed(text):
            self.child.send(answer)
        return True

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0, what: str = "text") -> str:
        """Pump until ``predicate(screen text)`` holds; return the screen text."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen.text()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} on the terminal within {timeout}s; screen:\n{screen}")
            if not self.pump(0.05):
                screen = self.screen.text()
                if predicate(screen):
                    return screen
                raise AssertionError(f"the program exited before {what} appeared; screen:\n{screen}")

    def wait_text(self, needle: str, timeout: float = 10.0) -> str:
        return self.wait_for(lambda screen: needle in screen, timeout, what=repr(needle))

    def wait_exit(self, timeout: float = 10.0) -> int | None:
        deadline = time.monotonic() + timeout
        while self.pump(0.05):
            if time.monotonic() > deadline:
                raise AssertionError(f"the program did not exit within {timeout}s; screen:\n"
                                     f"{self.screen.text()}")
        self.child.close()
        return self.child.exitstatus
