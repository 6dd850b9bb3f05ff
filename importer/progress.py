"""Progress of an import: bytes done and total per phase, rate, ETA, and CDI's "NN.NN%".

The pipeline calls ``start_phase`` and ``advance``/``set_done``; a reporter renders snapshots: a
progress bar on a terminal (tqdm), JSON lines for machines, or nothing. Snapshots are also written
atomically to a file when asked, which is how a controller reads an importer's progress.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from cdi.units import format_size

if TYPE_CHECKING:
    from tqdm import tqdm


@dataclass
class Phase:
    name: str
    total: int | None
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    completed: bool = True  # False when it ended by a failure: then only the bytes it got count

    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started


class Progress:
    """Thread-safe progress state; ``snapshot()`` is what reporters show."""

    def __init__(self, *, mode: str = "none", stream: IO[str] | None = None, file: str | None = None,
                 interval: float = 0.5) -> None:
        if mode == "auto":
            mode = "bar" if (stream or sys.stderr).isatty() else "none"
        if mode not in ("bar", "json", "none"):
            raise ValueError(f"invalid progress mode {mode!r}: use auto, bar, json or none")
        self.mode = mode
        self.stream = stream or sys.stderr
        self.file = file
        self.interval = interval
        self.phases: list[Phase] = []
        self.planned: list[str] = []
        self._high = 0.0  # the highest figure reported in this attempt
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: tqdm | None = None

    # -- updates from the pipeline ----------------------------------------------------------

    def plan(self, names: list[str]) -> None:
        """The phases that carry bytes, in order; the overall percentage spreads over them. A plan that
        adds phases to the running one (a conversion found necessary) keeps the figure from falling; any
        other plan is a new attempt, whose figure starts afresh."""
        grows = len(names) > len(self.planned) and names[: len(self.planned)] == self.planned
        if not grows:
            self._high = 0.0
        self.planned = list(names)

    def start_phase(self, name: str, total: int | None) -> None:
        if self.phases and self.phases[-1].ended is None:
            self.phases[-1].ended = time.monotonic()
            self._report(force=True)  # the final figures of the phase that ends
        with self._lock:
            if any(p.name == name for p in self.phases):
                self._high = 0.0  # the phase again: a new attempt, whose own bytes are the figure
            self.phases.append(Phase(name, total))
        self._report(force=True)

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self.phases[-1].total = total

    def advance(self, n: int) -> None:
        self.phases[-1].done += n  # one writer per phase; readers tolerate a torn read

    def set_done(self, done: int) -> None:
        self.phases[-1].done = done

    def end(self, *, completed: bool = True) -> None:
        """End the running phase; ``completed=False`` when it ended by a failure, so the figure stays the
        share of bytes it really got instead of jumping to 100%."""
        with self._lock:
            if self.phases and self.phases[-1].ended is None:
                self.phases[-1].ended = time.monotonic()
                self.phases[-1].completed = completed
        self._report(force=True)

    def discard(self) -> None:
        """Forget every phase: what a refused or cut-off attempt got is no longer held, so nothing is
        reported until the next attempt starts a phase (an upload server serves several attempts)."""
        with self._lock:
            self.phases.clear()
            self.planned = []
            self._high = 0.0

    # -- snapshots ------------------------------------------------------------------------------

    def percent(self) -> float:
        """Overall completion over the planned phases, as CDI reports it (0..100)."""
        names = self.planned or [p.name for p in self.phases]
        if not names:
            return 0.0
        total = 0.0
        for name in names:
            phase = next((p for p in reversed(self.phases) if p.name == name), None)  # the latest attempt
            if phase is None:
                continue
            if phase.ended is not None and (phase.completed or not phase.total):
                total += 1.0
            elif phase.total:
                total += min(1.0, phase.done / phase.total)
        # within one attempt the figure never falls (more phases planned spread it thinner)
        self._high = max(self._high, min(100.0, 100.0 * total / len(names)))
        return self._high

    def snapshot(self) -> dict[str, Any]:
        phase = self.phases[-1] if self.phases else None
        snap: dict[str, Any] = {"progress": f"{self.percent():.2f}%"}
        if phase is not None:
            secs = max(phase.seconds(), 1e-6)
            rate = phase.done / secs
            snap.update(phase=phase.name, done=phase.done, total=phase.total, rate=int(rate))
            if phase.total and rate > 0 and phase.ended is None:
                snap["eta"] = round(max(0.0, (phase.total - phase.done) / rate), 1)
        return snap

    # -- reporting --------------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        if self.mode != "none" or self.file:
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._report(force=True)
        if self._bar is not None:
            self._bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._report()

    def _report(self, force: bool = False) -> None:
        if not self.phases:
            return
        snap = self.snapshot()
        if self.file:
            tmp = self.file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(snap, f)
            os.replace(tmp, self.file)
        if self.mode == "json":
            print(json.dumps(snap), file=self.stream, flush=True)
        elif self.mode == "bar":
            self._draw(snap)

    def _draw(self, snap: dict[str, Any]) -> None:
        phase = self.phases[-1]
        if self._bar is None or self._bar.desc != phase.name:
            from tqdm import tqdm  # only a terminal needs it; it costs ~30 ms of start-up per worker

            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=phase.total, desc=phase.name, unit="B", unit_scale=True,
                             unit_divisor=1024, file=self.stream, dynamic_ncols=True, leave=True)
        self._bar.total = phase.total
        self._bar.n = phase.done
        self._bar.set_postfix_str(f"overall {snap['progress']}", refresh=False)
        self._bar.refresh()


def describe_rate(nbytes: int, seconds: float) -> str:
    return f"{format_size(nbytes)} in {seconds:.1f}s ({format_size(nbytes / max(seconds, 1e-6))}/s)"
