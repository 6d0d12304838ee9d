"""Run logs: CSV files (always) and TensorBoard (when the ``tensorboard`` package is installed).

CSV files are appended row by row; on ``--resume`` from step s, rows with ``step > s`` (written after
that checkpoint by the interrupted run) are dropped first, so a resumed run's logs read as one run.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


class CsvLog:
    """One CSV file with a fixed header; ``write(row)`` appends and flushes."""

    def __init__(self, path, fields: list[str], resume_step: int | None = None):
        self.path, self.fields = Path(path), list(fields)
        kept = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.fields)
        self._writer.writeheader()
        self._writer.writerows(kept)
        self._file.flush()

    def write(self, row: dict) -> None:
        self._writer.writerow(row)
        self._file.flush()

    def write_many(self, rows) -> None:
        self._writer.writerows(rows)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class TensorBoardLog:
    """Scalars and weight histograms for TensorBoard; a no-op (with one message) when unavailable."""

    def __init__(self, folder, enabled: bool, purge_step: int | None = None):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # tensorboard is optional at run time
            print(f"[mentormix] TensorBoard logging off ({exc}); `pip install tensorboard` to enable it; "
                  f"CSV logs are written anyway", file=sys.stderr)
            return
        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if v is not None and v != "":
                    self.writer.add_scalar(k, float(v), step)

    def histogram(self, step: int, tag: str, values) -> None:
        if self.writer is not None and len(values):
            self.writer.add_histogram(tag, values, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
