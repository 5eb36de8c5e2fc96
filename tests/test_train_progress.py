"""The step loop's helpers: the prefetch thread hands out batches with the state after each one (so a
checkpoint between steps resumes exactly), and progress is one line per log step off a terminal."""

from __future__ import annotations

import io

import pytest

from clip_jax.train.prefetch import Prefetcher
from clip_jax.train.progress import Progress


class Counter:
    """A resumable source: batch i is i; its state is the next i."""

    def __init__(self, stop: int = 100, fail_at: int | None = None) -> None:
        self.i, self.stop, self.fail_at = 0, stop, fail_at

    def __next__(self) -> int:
        if self.i == self.fail_at:
            raise ValueError(f"bad record at {self.i}")
        if self.i >= self.stop:
            raise StopIteration
        self.i += 1
        return self.i - 1

    def get_state(self) -> dict:
        return {"next": self.i}


def test_prefetch_state_is_that_of_the_batches_handed_out():
    source = Counter()
    feed = Prefetcher(source, place=lambda b: b * 10, size=3)
    assert feed.get_state() == {"next": 0}
    got = [next(feed) for _ in range(5)]
    assert got == [0, 10, 20, 30, 40]
    assert feed.get_state() == {"next": 5}  # not the source's position, which has run ahead
    feed.close()
    assert source.i >= 5 and feed.get_state() == {"next": 5}


def test_prefetch_raises_source_errors_in_order_and_ends():
    feed = Prefetcher(Counter(fail_at=2), size=2)
    assert [next(feed), next(feed)] == [0, 1]
    with pytest.raises(ValueError, match="bad record at 2"):
        next(feed)
    feed.close()
    feed = Prefetcher(Counter(stop=2), size=4)
    assert list(feed) == [0, 1]
    with pytest.raises(StopIteration):
        next(feed)
    feed.close()


def test_progress_off_a_terminal_is_one_line_per_report_without_carriage_returns():
    out = io.StringIO()
    progress = Progress(total=100, start=0, batch_size=8, stream=out)
    assert not progress.live
    for step in range(1, 11):
        progress.step_done(step)
        if step % 5 == 0:
            progress.report(step, loss=2.5)
    progress.note("step 10: eval shape (0.1 s)")
    progress.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3
    assert lines[0].startswith("step   5/100  loss 2.5000") and "img/s" in lines[0] and "eta" in lines[0]
    assert lines[2] == "step 10: eval shape (0.1 s)"


def test_progress_rate_excludes_the_compiling_step():
    progress = Progress(total=10, start=4, batch_size=2, stream=io.StringIO())
    progress.step_done(5)  # the resumed run's first step compiles: not timed
    assert progress.images_per_sec() is None
    progress.step_done(6)
    assert progress.images_per_sec() is None  # one timestamp is no interval
    progress.step_done(7)
    assert progress.images_per_sec() > 0 and progress.eta(7) > 0
