"""Progress of the long data_gen stages (import_pairs, balance, write, ...): the one helper.

On a terminal: one line redrawn in place, `desc: N unit (R/s) [ETA h:mm:ss]`. With `quiet`, or
when stderr is not a terminal (a log file, a SLURM job), a plain line every `every_seconds`
instead, and one at the end. The ETA needs a total, or a `fraction` done (e.g. the bytes of a
CSV read so far), since a 30M-row CSV is not counted before it is read. Stdlib only.
"""
import sys
import time

REDRAW_SECONDS = 0.2


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, desc: str, total: "int | None" = None, unit: str = "items",
                 quiet: bool = False, every_seconds: float = 10.0, stream=None):
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream or sys.stderr
        self.live = not quiet and getattr(self.stream, "isatty", lambda: False)()
        self.every = REDRAW_SECONDS if self.live else every_seconds
        self.start = self.last = time.perf_counter()
        self.done, self.fraction, self.note = 0, None, ""

    def update(self, n: int = 1, *, fraction: "float | None" = None, note: str = "") -> None:
        self.done += n
        if fraction is not None:
            self.fraction = fraction
        if note:
            self.note = note
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self._show(now - self.start)

    def line(self, elapsed: float) -> str:
        rate = self.done / max(elapsed, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        text = f"{self.desc}: {self.done}{of} {self.unit} ({rate:.1f}/s)"
        frac = self.done / self.total if self.total else self.fraction
        if frac:
            text += f" ETA {_clock(elapsed * (1 - frac) / frac)}"
        return text + (f" {self.note}" if self.note else "")

    def _show(self, elapsed: float, end: bool = False) -> None:
        if self.live:
            self.stream.write("\r" + self.line(elapsed) + ("\n" if end else "\x1b[K"))
        else:
            self.stream.write(self.line(elapsed) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._show(time.perf_counter() - self.start, end=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(items, total=None, desc="", *, unit="items", quiet=False, every_seconds=10.0):
    """Yields `items`, reporting as `Progress` does."""
    bar = Progress(desc, total, unit, quiet, every_seconds)
    for item in items:
        yield item
        bar.update()
    bar.close()
