"""One progress bar over a sweep, whatever runs it (this process, local workers, Ray).

The bar counts finished runs out of the sweep's, shows how many are done, failed (or
diverged) and running, and estimates the time left from the rate runs have finished at
so far (tqdm's ETA: with runs of similar length and a steady number in flight, the sweep's
remaining time). Each finished run's one-line result is printed above the bar on stdout;
the bar itself goes to stderr, so ``zoology run ... > results.txt`` keeps the results clean.
Executors call :meth:`started` when a run begins, :meth:`tick` while they wait, and the
command's report callback calls :meth:`finished`.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import IO, Any

from tqdm.auto import tqdm

FORMAT = "{desc} |{bar}| {n_fmt}/{total_fmt} runs [{elapsed}<{remaining}]"


class SweepProgress:
    """Counts of a sweep's runs, drawn as one bar when ``enabled`` (else only counted)."""

    def __init__(self, total: int, enabled: bool = True, file: IO[str] | None = None) -> None:
        self.total = total
        self.counts: Counter[str] = Counter()  # finished runs by status
        self.running: set[str] = set()
        self.bar = tqdm(total=total, desc="sweep", unit="run", file=file or sys.stderr, disable=not enabled,
                        bar_format=FORMAT, dynamic_ncols=True, leave=True, position=0)
        self._show()

    def _show(self) -> None:
        parts = [f"done {self.counts['done']}", f"failed {self.counts['failed']}"]
        parts += [f"{status} {n}" for status, n in self.counts.items() if status not in ("done", "failed")]
        parts.append(f"running {len(self.running)}")
        self.bar.set_description_str("sweep: " + " · ".join(parts), refresh=True)

    def started(self, run: Any) -> None:
        """Run ``run`` (its run directory or id) began."""
        self.running.add(str(run))
        self._show()

    def finished(self, run: Any, status: str, line: str) -> None:
        """Run ``run`` ended with ``status`` (done, failed, diverged, or what its executor
        reports; a missing one counts as failed): print its result ``line`` above the bar."""
        self.running.discard(str(run))
        self.counts[status if status and status != "None" else "failed"] += 1
        if self.bar.disable:
            print(line, flush=True)
        else:
            tqdm.write(line, file=sys.stdout)
        self.bar.update(1)
        self._show()

    def tick(self) -> None:
        """Redraw (elapsed time and ETA move on while no run ends)."""
        if not self.bar.disable:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
