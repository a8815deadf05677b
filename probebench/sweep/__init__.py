"""Ablation sweeps: one YAML file → a grid of run configs → shared extractions → probe jobs → one results table.

**Layout.** ``results/<sweep>/results.csv`` is the sweep's table: every cell's rows, with the cell's name in
the ``run`` column, so ``probebench analyze results/<sweep>`` works directly. Each cell also runs as an
ordinary pipeline run in ``results/<sweep>/cells/<cell>/`` (its own ``results.csv``, ``config.yaml`` and
``heads/``). Why both: the pipeline's per-run semantics stay intact — ``cells: best`` reads the best ridge
cell of *this* cell's results, not another cell's; each cell's config and heads have their own place — and
the per-cell file is the cell's state (only-missing), while the sweep table is its union. Shared screens live
in ``results/<sweep>/screens/<key>/``, submitit's files in ``results/<sweep>/submitit/``; ``sweep.yaml``,
``config.yaml`` and ``summary.csv`` record the grid, the base config and the last invocation's outcomes.

One module per step, each depending only on those before it:

- :mod:`.spec` — the sweep file: parsing, axis expansion, cell naming, validation (:func:`load_sweep`);
- :mod:`.state` — which cells are done, merging cell rows into the table, deleting rows for ``--force``;
- :mod:`.screens` — ridge screens that several cells share: computed once, imported into each cell;
- :mod:`.jobs` — a task (extraction, screen or cell) as picklable data, and how one runs;
- :mod:`.executors` — where tasks run: this process, worker processes, submitit / SLURM job arrays;
- :mod:`.summary` — the per-cell outcome table and ``summary.csv``;
- :mod:`.generation` — generation sweeps (below): their cells, state, ``--dry-run`` and run;
- :mod:`.plan` — which cells, extractions and screens run (:func:`plan_sweep`) and ``--dry-run``;
- :mod:`.runner` — :func:`run_sweep`: the phases in order, failures passed on to the jobs that need them.

**Generation sweeps.** A sweep file with ``generate:`` (``probebench generate``'s fields) in place of ``base:``
expands the same axes into ``probebench generate`` cells (prompts × seeds × guidance ...): each cell writes a
labelled ``folder`` dataset to ``<output_dir>/<sweep>/cells/<cell>/``, runs as a ``generate`` task on the same
executors, and is done once its ``dataset.yaml`` exists (``--force`` deletes the folder first). The sweep folder
holds ``sweep.yaml`` and ``summary.csv``, but no ``results.csv`` or report: the products are the datasets.
"""

from probebench.sweep.executors import EXECUTORS, SubmititBackend, SweepJob, make_backend
from probebench.sweep.generation import (
    GenerationCell,
    GenerationSweep,
    dry_run_generation,
    plan_generation,
    run_generation_sweep,
)
from probebench.sweep.jobs import JobResult, Task, run_locked
from probebench.sweep.plan import Plan, dry_run_text, plan_sweep
from probebench.sweep.runner import run_sweep
from probebench.sweep.screens import Screen, import_screen, screen_state
from probebench.sweep.spec import CELLS_DIR, DEFAULT_MAX_CELLS, Cell, SlurmConfig, Sweep, load_sweep
from probebench.sweep.state import cell_done, missing_parts
from probebench.sweep.summary import Summary

__all__ = [
    "CELLS_DIR",
    "DEFAULT_MAX_CELLS",
    "EXECUTORS",
    "Cell",
    "GenerationCell",
    "GenerationSweep",
    "JobResult",
    "Plan",
    "Screen",
    "SlurmConfig",
    "SubmititBackend",
    "Summary",
    "Sweep",
    "SweepJob",
    "Task",
    "cell_done",
    "dry_run_generation",
    "dry_run_text",
    "import_screen",
    "load_sweep",
    "make_backend",
    "missing_parts",
    "plan_generation",
    "plan_sweep",
    "run_generation_sweep",
    "run_locked",
    "run_sweep",
    "screen_state",
]
