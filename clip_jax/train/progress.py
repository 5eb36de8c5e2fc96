"""Training progress as users expect it: one live bar on a terminal (step, loss, img/s, ETA), and one
concise log line every `log_every` steps when the output is a file (CI logs, nohup), with no carriage
returns piling up in it.

Throughput is measured between step *completions* (the loop waits for each step's finiteness flag one
step late, so the host clock follows the devices), over the last `window` steps, and never counts the
first step of a run or of a resume, which includes compilation.
"""

from __future__ import annotations

import collections
import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(
        self,
        total: int,
        start: int,
        batch_size: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        window: int = 50,
    ) -> None:
        self.total, self.batch_size, self.enabled = total, batch_size, enabled
        self.stream = stream or sys.stderr
        self.live = enabled and self.stream.isatty()
        self._first = start + 1  # the step that compiles: excluded from every rate
        self._times: collections.deque[tuple[int, float]] = collections.deque(maxlen=window + 1)
        self._bar = None
        if self.live:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=self.stream)

    def step_done(self, step: int) -> None:
        """Record that `step` has been dispatched (its predecessor has completed)."""
        if step > self._first:
            self._times.append((step, time.perf_counter()))
        if self._bar is not None:
            self._bar.update(1)

    def images_per_sec(self) -> float | None:
        """Images per second over the recent window, compile excluded (None until two steps are timed)."""
        if len(self._times) < 2:
            return None
        (s0, t0), (s1, t1) = self._times[0], self._times[-1]
        return (s1 - s0) * self.batch_size / max(t1 - t0, 1e-9)

    def eta(self, step: int) -> float | None:
        ips = self.images_per_sec()
        return None if not ips else (self.total - step) * self.batch_size / ips

    def report(self, step: int, loss: float) -> None:
        """A log step: the bar's numbers on a terminal, else one line."""
        if not self.enabled:
            return
        ips, eta = self.images_per_sec(), self.eta(step)
        if self._bar is not None:
            post = {"loss": f"{loss:.4f}"}
            if ips is not None:
                post["img_s"] = f"{ips:.0f}"
            self._bar.set_postfix(post, refresh=False)
            return
        rate = f"{ips:7.1f} img/s" if ips is not None else "  (compiling)"
        left = f"  eta {_duration(eta)}" if eta is not None else ""
        width = len(str(self.total))
        print(
            f"step {step:>{width}}/{self.total}  loss {loss:.4f}  {rate}{left}", file=self.stream, flush=True
        )

    def note(self, message: str) -> None:
        """A line for an event (evaluation, checkpoint) that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def pause_rate(self) -> None:
        """Forget the window: after an evaluation or a blocking save, the next steps would count it."""
        self._times.clear()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
