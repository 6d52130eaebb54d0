"""What a training run tells its user: the loss log (CSV + plot) and a clean stop on Ctrl-C.

The log is one list of rows ``[step, train_loss, val_loss, lr, wall_time_s]`` (val_loss NaN at
steps without a validation pass). It travels in the checkpoint (``Checkpoint.loss_history``),
so a resumed run continues the same curve and wall clock, and it is mirrored to
``train_log.csv`` in the output directory (rewritten from the checkpoint's rows on resume, then
appended row by row, so a crash loses at most the rows since the last write).

Checkpoints written before the validation split hold two-column rows ``[step, train_loss]``;
they are read as rows without validation, learning rate or wall time.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

CSV_NAME = "train_log.csv"
CSV_COLUMNS: tuple[str, ...] = ("step", "train_loss", "val_loss", "lr", "wall_time_s")
NAN = float("nan")


def _row(values: Sequence[float]) -> list[float]:
    """A history row padded to the five columns (old checkpoints have two)."""
    row = [float(v) for v in values][: len(CSV_COLUMNS)]
    return row + [NAN] * (len(CSV_COLUMNS) - len(row))


def _cell(value: float, column: str) -> str:
    if math.isnan(value):
        return ""
    if column == "step":
        return str(int(value))
    return f"{value:.6g}" if column != "wall_time_s" else f"{value:.2f}"


class TrainingLog:
    """The run's loss history, mirrored to a CSV file.

    Args:
        csv_path: where to write (None: keep the rows in memory only, e.g. on DDP ranks > 0).
        history: rows carried over from a checkpoint (resume).
    """

    def __init__(self, csv_path: Path | None, history: Sequence[Sequence[float]] = ()) -> None:
        self.csv_path = csv_path
        self.rows: list[list[float]] = [_row(r) for r in history]
        if csv_path is not None:
            lines = [",".join(CSV_COLUMNS)] + [self._line(r) for r in self.rows]
            csv_path.write_text("\n".join(lines) + "\n")

    @staticmethod
    def _line(row: list[float]) -> str:
        return ",".join(_cell(v, c) for v, c in zip(row, CSV_COLUMNS))

    @property
    def wall_time_s(self) -> float:
        """Training wall time (s) at the last row (0 for a fresh run or an old checkpoint)."""
        for row in reversed(self.rows):
            if not math.isnan(row[4]):
                return row[4]
        return 0.0

    def last_val_loss(self) -> float | None:
        for row in reversed(self.rows):
            if not math.isnan(row[2]):
                return row[2]
        return None

    def add(self, step: int, train_loss: float, val_loss: float | None, lr: float, wall_time_s: float) -> None:
        """One row (val_loss None: no validation at this step)."""
        row = [float(step), float(train_loss), NAN if val_loss is None else float(val_loss), float(lr), float(wall_time_s)]
        self.rows.append(row)
        if self.csv_path is not None:
            with open(self.csv_path, "a") as handle:
                handle.write(self._line(row) + "\n")

    def plot(self, path: Path, title: str) -> None:
        """Training loss (EMA-smoothed) and validation loss against step, log scale, to a PNG."""
        plot_loss(self.rows, path, title)


def plot_loss(history: Sequence[Sequence[float]], path: Path, title: str) -> None:
    """Loss curves to a PNG: training (EMA-smoothed) and, where present, validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [_row(r) for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if rows:
        ax.plot([r[0] for r in rows], [r[1] for r in rows], lw=1.5, label="train (EMA-smoothed)")
        val = [(r[0], r[2]) for r in rows if not math.isnan(r[2])]
        if val:
            ax.plot(*zip(*val), "o-", lw=1.5, ms=3, label="validation (EMA weights, held-out episodes)")
        ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class StopOnInterrupt:
    """Turns the first Ctrl-C (SIGINT) into a request to stop after the current step.

    The training loop checks :attr:`requested` between steps, so the checkpoint it then writes
    is never taken halfway through an optimizer update. A second Ctrl-C interrupts at once
    (KeyboardInterrupt), as users expect when the first one seems ignored. Outside the main
    thread (where Python cannot install signal handlers) it does nothing and Ctrl-C behaves as
    usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
