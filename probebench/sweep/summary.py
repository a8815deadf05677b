"""What one sweep invocation reports: per-cell outcomes as a text table (the CLI prints it) and ``summary.csv``."""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from probebench.core.io import atomic_write_bytes
from probebench.sweep.jobs import JobResult
from probebench.sweep.spec import Sweep

if TYPE_CHECKING:
    from probebench.sweep.generation import GenerationSweep


@dataclass
class Summary:
    """Per-cell outcome of one sweep invocation, and the extractions and shared screens it ran (none for a
    generation sweep)."""

    sweep: Sweep | GenerationSweep
    cells: list[JobResult]
    extractions: list[JobResult]
    report: Path | None = None
    report_error: str = ""
    screens: list[JobResult] = field(default_factory=list)

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.cells if r.status in ("failed", "cancelled")]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.report_error

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("done", "skipped", "failed", "cancelled"), 0)
        for r in self.cells:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def text(self) -> str:
        """The summary table: one line per cell with its status, time and (for failures) the reason."""
        c = self.counts()
        ran = sum(r.status == "done" for r in self.extractions)
        found = sum(r.status == "skipped" for r in self.extractions)
        head = (
            f"sweep {self.sweep.name}: {len(self.cells)} cells — {c['done']} done, {c['skipped']} skipped, "
            f"{c['failed']} failed"
            + (f", {c['cancelled']} cancelled" if c["cancelled"] else "")
            + (
                f"; {len(self.extractions)} extraction jobs ({ran} extracted, {found} found complete)"
                if self.extractions
                else ""
            )
            + (
                f"; {len(self.screens)} shared screen jobs "
                f"({sum(r.status == 'done' for r in self.screens)} computed, "
                f"{sum(r.status == 'skipped' for r in self.screens)} found complete)"
                if self.screens
                else ""
            )
            + f" → {self.sweep.output}"
        )
        rows = [
            {
                "cell": r.name,
                "status": r.status,
                "time": f"{r.seconds:.1f}s" if r.seconds else "",
                "reason": r.reason,
            }
            for r in self.cells
        ]
        lines = [head, *format_table(rows)]
        failed_ext = [r for r in self.extractions if r.status == "failed"]
        lines += [f"extraction {r.name} failed: {r.reason}" for r in failed_ext]
        lines += [f"screen {r.name} failed: {r.reason}" for r in self.screens if r.status == "failed"]
        if self.report:
            lines.append(f"report: {self.report}")
        if self.report_error:
            lines.append(f"report failed: {self.report_error}")
        return "\n".join(lines)


def format_table(rows: list[dict[str, str]]) -> list[str]:
    """Rows of equal keys as left-aligned text columns under an upper-case header."""
    if not rows:
        return []
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    out = ["  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip()]
    out += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return out


def write_summary(summary: Summary) -> None:
    """``<sweep>/summary.csv``: one row per job of this invocation (extractions, screens, then cells)."""
    rows = [dataclasses.asdict(r) for r in [*summary.extractions, *summary.screens, *summary.cells]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["kind", "name", "status", "reason", "seconds"])
    w.writeheader()
    w.writerows({**r, "seconds": f"{r['seconds']:.2f}"} for r in rows)
    atomic_write_bytes(summary.sweep.dir / "summary.csv", buf.getvalue().encode())
