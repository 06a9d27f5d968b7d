"""The report's progress bars on stderr: a tqdm bar on a terminal, one summary line in a log.

``bar = Progress("build", 40, enabled)``; ``bar(12, "vec_dot avx2")`` moves the bar to 12 of 40 with a label;
``bar.close()`` ends it with the elapsed time. On a terminal the bar redraws in place
(``build          [#########.....] 12/40, vec_dot avx2``); in a log (CI, a pipe) only the final line is written
(``build          40/40 done in 3.1 s``). Nothing at all when ``enabled`` is False (``--no-progress``).
"""

from __future__ import annotations

import shutil
import sys
import time

from tqdm import tqdm

__all__ = ["Progress"]

_BAR = "{desc} [{bar:30}] {n_fmt}/{total_fmt}{postfix}"


class Progress:
    """A progress bar of ``total`` steps titled ``title`` (see the module docstring)."""

    def __init__(self, title: str, total: int, enabled: bool = True):
        self.title, self.total, self.enabled = title, max(total, 1), enabled
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            # a terminal that reports no size (0 x 0) would make tqdm hide the bar: 80 x 24 then
            cols, lines = shutil.get_terminal_size()
            self.bar = tqdm(total=self.total, desc=f"{title:<14}", bar_format=_BAR, ascii=".#", file=sys.stderr,
                            leave=True, ncols=cols, nrows=lines)

    def __call__(self, done: int, label: str = "") -> None:
        if self.bar is None:
            return
        self.bar.set_postfix_str(label[:48], refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if not self.enabled:
            return
        elapsed = f"done in {time.perf_counter() - self.t0:.1f} s"
        if self.bar is not None:
            self.bar.set_postfix_str(elapsed, refresh=False)
            self.bar.update(self.total - self.bar.n)
            self.bar.close()
        else:
            print(f"{self.title:<14} {self.total}/{self.total} {elapsed}", file=sys.stderr, flush=True)
