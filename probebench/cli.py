"""The ``probebench`` command line. Errors caused by input are one line and exit code 2 (``--debug`` for a
traceback); each subcommand has ``--help``. ``--plugin FILE.py`` (repeatable, before or after the subcommand)
imports outside files that register backbones, tasks or probes (see :mod:`probebench.core.plugins`)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from probebench.core.errors import ProbebenchError, did_you_mean

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as ONE line naming the problem and the valid choices."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if "invalid choice" in message:
            # argparse: "argument command: invalid choice: 'x' (choose from a, b)"
            bad = message.split("invalid choice:", 1)[1].split("(")[0].strip().strip("'\"")
            choices = message.rsplit("(choose from", 1)[-1].rstrip(")").replace("'", "").split(",")
            close = did_you_mean(bad, [c.strip() for c in choices])
            if close:
                message += f"; did you mean {close[0]!r}?"
        elif message.startswith("unrecognized arguments"):
            opts = [a for act in self._actions for a in act.option_strings if a.startswith("--")]
            bad = message.split(":", 1)[1].split()[0]
            close = did_you_mean(bad, opts)
            message += f" (valid options: {', '.join(sorted(opts))})" + (
                f"; did you mean {close[0]}?" if close else ""
            )
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _add_config_args(p: argparse.ArgumentParser, config_required: bool = False) -> None:
    p.add_argument(
        "config",
        nargs="?" if not config_required else None,
        default=None,
        help="YAML config (see configs/); omitted: the embedded quickstart defaults",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. probe.lambdas=[0.1,1] data.max_train=32 backbones.0.layers=[0,2]",
    )


PLUGIN_HELP = (
    "a .py file (or module name) to import first, so its @BACKBONES.register (or TASKS/PROBES) decorators run; "
    "repeatable; also read from $PROBEBENCH_PLUGINS (os.pathsep-separated)"
)


def _add_plugin_arg(p: argparse.ArgumentParser, dest: str) -> None:
    # the top-level parser and every subcommand take --plugin, into different ``dest``s: argparse copies a
    # subparser's values over the top-level ones, which would drop plugins given before the subcommand
    p.add_argument("--plugin", dest=dest, action="append", default=[], metavar="FILE.py", help=PLUGIN_HELP)


def _parse_options(items: Sequence[str]) -> dict[str, object]:
    """``--option KEY=VALUE`` items → keyword arguments (values parsed as YAML: 3, 0.5, true, [1, 2], text)."""
    import yaml

    options: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ProbebenchError(f"--option {item!r} must look like KEY=VALUE (e.g. config=tiny).")
        options[key] = yaml.safe_load(raw)
    return options


def build_parser() -> Parser:
    p = Parser(prog="probebench", description="Feature-probing benchmarks for frozen vision backbones.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    _add_plugin_arg(p, "plugin")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    ls = sub.add_parser("list", help="list registered backbones, tasks, probes or target kinds")
    ls.add_argument("what", choices=["backbones", "tasks", "probes", "kinds"])

    ex = sub.add_parser(
        "extract", help="extract features of one backbone on one dataset split into the cache"
    )
    ex.add_argument("--backbone", required=True, help="registered name, e.g. timm:efficientnet_lite0")
    ex.add_argument("--dataset", default="scenes", help="registered task/dataset name (default: scenes)")
    ex.add_argument("--root", default=None, help="dataset root directory (datasets on disk)")
    ex.add_argument("--split", default="train")
    ex.add_argument("--layers", default="all", help="'all', '0,3,-1' or a slice '0:12:2' (0-based blocks)")
    ex.add_argument("--timesteps", default=None, help="comma list of native timesteps (diffusion backbones)")
    ex.add_argument("--noise-draws", type=int, default=1)
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--weights", default="default", help="default | random | PATH")
    ex.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ex.add_argument("--device", default=None)
    ex.add_argument("--image-size", type=int, default=None, help="backbone input size (default: the model's)")
    ex.add_argument("--pool-to", type=int, default=None, help="average-pool feature maps to at most N×N")
    ex.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backbone option, repeatable (e.g. config=tiny, prompt='a photo', class_id=207)",
    )
    ex.add_argument("--batch-size", type=int, default=16)
    ex.add_argument("--shard-size", type=int, default=64)
    ex.add_argument("--max-images", type=int, default=None)
    ex.add_argument("--resolution", type=int, default=None, help="scenes: render resolution")
    ex.add_argument(
        "--cache", default=None, help="cache root (default: $PROBEBENCH_CACHE or ~/.cache/probebench)"
    )
    ex.add_argument("--no-progress", action="store_true")

    fit = sub.add_parser("fit", help="fit the configured probes on existing caches (no extraction)")
    _add_config_args(fit)

    an = sub.add_parser("analyze", help="figures and REPORT.md for a results directory")
    an.add_argument("results_dir")

    rn = sub.add_parser("run", help="the whole pipeline; with no config: the embedded quickstart")
    _add_config_args(rn)
    rn.add_argument("--no-progress", action="store_true")
    rn.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (model rows, cache bytes per backbone × split and stage, what is cached, memory "
        "estimate, free disk); run and extract nothing",
    )

    sw = sub.add_parser(
        "sweep",
        help="run an ablation grid from a sweep file (configs/sweeps/); resumable, local or SLURM",
        description="Expand a sweep file (base config + axes) into cells, extract each distinct feature "
        "config once, then fit every missing cell; results go to <output_dir>/<sweep name>/results.csv "
        "with the cell name in the `run` column. A sweep file with generate: (probebench generate's fields) "
        "in place of base: makes one labelled folder dataset per cell in <output_dir>/<sweep name>/cells/ "
        "(done once its dataset.yaml exists; no results table). Exit code 1 if any cell failed.",
    )
    sw.add_argument(
        "sweep_file",
        help="sweep YAML (base: or generate:, + axes: + zip: + cell_name: + slurm:; generate: sweeps also "
        "output_dir:)",
    )
    sw.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides for every cell, e.g. output_dir=/tmp/r (generate: sweeps: a generate field or output_dir)",
    )
    sw.add_argument(
        "--dry-run", action="store_true", help="print the cells and how many are done; run nothing"
    )
    sw.add_argument(
        "--executor",
        default="local",
        choices=["local", "slurm", "submitit-local", "submitit-debug"],
        help="local: this process or --workers processes; slurm: submitit job arrays (the sweep's slurm: "
        "section); submitit-local/-debug: the same submitit path on this machine",
    )
    sw.add_argument(
        "--workers", type=int, default=1, help="worker processes for --executor local (default 1)"
    )
    sw.add_argument(
        "--force",
        nargs="+",
        action="extend",
        default=[],
        metavar="CELL",
        help="redo these cells (names or globs)",
    )
    sw.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell")
    sw.add_argument("--max-cells", type=int, default=500, help="refuse grids larger than this (default 500)")
    sw.add_argument(
        "--no-report",
        action="store_true",
        help="skip REPORT.md and figures at the end (generate: sweeps make none)",
    )
    sw.add_argument("--no-progress", action="store_true")

    ck = sub.add_parser(
        "check-backbone",
        help="run the adapter contract on a registered backbone (plugins included)",
        description="Build NAME and check the adapter contract: shapes and keys, finite values, determinism, "
        "batch independence, early exit, timestep handling, layer range errors, and the offline error for "
        "weights='default' (skipped when those weights are on disk). One line per check; exit code 0 only if "
        "no check fails, 1 otherwise.",
    )
    ck.add_argument("name", help="registered backbone name, e.g. my-cnn or timm:resnet18")
    ck.add_argument(
        "--weights",
        default="random",
        help="random (default: the real architecture, nothing downloaded) | default | PATH",
    )
    ck.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backbone option, repeatable (e.g. config=tiny image_size=64); also used by the offline check",
    )
    ck.add_argument(
        "--test-kwargs",
        action="store_true",
        help="also pass the entry's registered test_kwargs (the test suite's small config, e.g. config=tiny)",
    )
    ck.add_argument("--device", default=None)
    ck.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])

    eb = sub.add_parser(
        "export-bundle",
        help="a run's trained fusion heads → a generation bundle (for `probebench generate`)",
        description="Write a generation bundle from RUN_DIR: one head per task of one probe variant and model "
        "(the probe seed with the best validation score), the generator identity from the feature cache the "
        "heads were trained on, and the label spaces.",
    )
    eb.add_argument("run_dir", help="a `probebench run` results directory with saved fusion heads")
    eb.add_argument("--out", required=True, help="bundle folder to write")
    eb.add_argument(
        "--variant",
        default="fusion-spatial",
        help="probe variant (default fusion-spatial; fusion-single: the best single timestep)",
    )
    eb.add_argument("--model", default=None, help="model of the run (a heads/ folder name), when several")
    eb.add_argument("--tasks", default=None, help="comma list (default: every task with a head)")
    eb.add_argument("--stage-label", default=None, help="the fusion stage's label, if it has one")
    eb.add_argument(
        "--cache-dir", default=None, help="feature cache root (default: the run's extract.cache_dir)"
    )
    eb.add_argument("--force", action="store_true", help="replace an existing bundle")

    gn = sub.add_parser(
        "generate",
        help="sample images with a frozen diffusion transformer and decode their labels in the same pass",
        description="Generate N samples with the bundle's backbone through its own diffusers pipeline; its heads "
        "decode segmentation / saliency / depth from features captured during sampling. Output: the `folder` "
        "dataset layout (dataset.yaml with provenance, written last) and contact_sheet.png. Resumable; under "
        "torchrun sample i goes to rank i mod W (the output does not depend on W).",
    )
    gn.add_argument("bundle", help="a bundle folder (`probebench export-bundle`)")
    gn.add_argument("--out", required=True, help="output folder")
    gn.add_argument("--num-samples", "-n", type=int, default=8)
    gn.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="repeatable; sample i gets prompt i mod count (tiny-mmdit: class names, e.g. 'sphere floor'); "
        "default: the empty prompt",
    )
    gn.add_argument("--prompts-file", default=None, help="one prompt per line (instead of --prompt)")
    gn.add_argument("--seed", type=int, default=0)
    gn.add_argument("--steps", type=int, default=None, help="sampling steps (default: the family's)")
    gn.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: none)")
    gn.add_argument(
        "--negative-prompt",
        default=None,
        help="guidance's negative prompt (default: the prompt the bundle's features were extracted with)",
    )
    gn.add_argument("--tasks", default=None, help="comma list (default: every task of the bundle)")
    gn.add_argument("--batch-size", type=int, default=8)
    gn.add_argument("--device", default=None)
    gn.add_argument(
        "--threads", type=int, default=None, help="CPU threads per process (the bytes depend on it on a CPU)"
    )
    gn.add_argument("--name", default=None, help="dataset name in dataset.yaml")
    gn.add_argument("--no-progress", action="store_true")

    sc = sub.add_parser("scenes", help="the procedural scene dataset")
    scs = sc.add_subparsers(dest="scenes_command", metavar="ACTION", parser_class=Parser)
    scs.required = True
    exp = scs.add_parser("export", help="write scenes in plain folder form (PNG images, masks, 16-bit depth)")
    exp.add_argument("out_dir")
    exp.add_argument("--resolution", type=int, default=64)
    exp.add_argument("--train", type=int, default=512)
    exp.add_argument("--val", type=int, default=128)
    exp.add_argument("--test", type=int, default=128)
    exp.add_argument("--seed", type=int, default=0)
    for subparser in sub.choices.values():
        _add_plugin_arg(subparser, "plugin_1")
    for subparser in scs.choices.values():
        _add_plugin_arg(subparser, "plugin_2")
    return p


def _print_table(rows: list[dict[str, str]]) -> None:
    cols = list(rows[0]) if rows else ["name"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "backbones":
        from backbones import BACKBONES as reg
    elif args.what == "tasks":
        from tasks import TASKS as reg
    elif args.what == "kinds":
        from tasks.kinds import TARGET_KINDS as reg
    else:
        from probes import PROBES as reg
    _print_table(reg.table())
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    import backbones
    import tasks
    from backbones.store import extract_to_cache
    from probebench.config import default_cache_dir
    from tasks.base import Subset

    timesteps = None
    if args.timesteps:
        try:
            timesteps = [float(t) if any(c in t for c in ".e") else int(t) for t in args.timesteps.split(",")]
        except ValueError as e:
            raise ProbebenchError(
                f"--timesteps must be a comma list of numbers, got {args.timesteps!r}."
            ) from e
    opts = {"resolution": args.resolution} if args.resolution else {}
    ds = tasks.create(args.dataset, split=args.split, **({"root": args.root} if args.root else {}), **opts)
    if args.max_images is not None:
        ds = Subset(ds, args.max_images)
    dist = _maybe_init_distributed(args.device)
    options = _parse_options(args.option)
    adapter = backbones.create(
        args.backbone,
        weights=args.weights,
        device=args.device,
        dtype=args.dtype,
        **({"image_size": args.image_size} if args.image_size else {}),
        **options,
    )
    cache = extract_to_cache(
        adapter,
        ds,
        layers=args.layers,
        timesteps=timesteps,
        cache_root=args.cache or default_cache_dir(),
        seed=args.seed,
        noise_draws=args.noise_draws,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        pool_to=args.pool_to,
        progress=not args.no_progress,
    )
    if dist:
        import torch.distributed

        torch.distributed.destroy_process_group()
    print(getattr(cache, "path", cache))
    return 0


def _maybe_init_distributed(device: str | None) -> bool:
    """Under torchrun (WORLD_SIZE > 1) join the process group: gloo on CPU, nccl on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed

    if not torch.distributed.is_initialized():
        backend = "nccl" if device and device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return True


def cmd_run(args: argparse.Namespace, extract: bool = True) -> int:
    from probebench.config import load_config
    from probebench.pipeline import run

    cfg_path, overrides = args.config, list(args.overrides)
    if cfg_path is not None and "=" in cfg_path and not os.path.exists(cfg_path):
        cfg_path, overrides = None, [cfg_path, *overrides]
    cfg = load_config(cfg_path, overrides)
    if getattr(args, "dry_run", False):
        from probebench.plan import plan_run

        print(plan_run(cfg).text())
        return 0
    out = run(cfg, extract=extract, progress=not getattr(args, "no_progress", False))
    print(out / "REPORT.md")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    print(write_report(args.results_dir))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from probebench.sweep import dry_run_text, load_sweep, run_sweep

    sweep = load_sweep(args.sweep_file, args.overrides, max_cells=args.max_cells)
    if args.dry_run:
        print(dry_run_text(sweep, args.force))
        return 0
    summary = run_sweep(
        sweep,
        executor=args.executor,
        workers=args.workers,
        force=args.force,
        fail_fast=args.fail_fast,
        progress=not args.no_progress,
        report=not args.no_report,
    )
    print(summary.text())
    return 0 if summary.ok else 1


def cmd_check_backbone(args: argparse.Namespace) -> int:
    from backbones import BACKBONES
    from backbones.contract import iter_checks

    options = _parse_options(args.option)
    built = dict(options)
    if args.test_kwargs:
        BACKBONES.get(args.name)  # import a lazy entry (an entry point): its decorator holds the test_kwargs
        built = {**BACKBONES.entry(args.name).extra.get("test_kwargs", {}), **options}
    print(f"check-backbone {args.name}: weights={args.weights}" + (f", options {built}" if built else ""))
    counts = {"pass": 0, "fail": 0, "skip": 0}
    for result in iter_checks(
        args.name,
        weights=args.weights,
        options=built,
        offline_options=options,
        device=args.device,
        dtype=args.dtype,
    ):
        counts[result.status] += 1
        print(result.line(), flush=True)
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return 0 if counts["fail"] == 0 else 1


def cmd_scenes(args: argparse.Namespace) -> int:
    from tasks.scenes import export_scenes

    out = export_scenes(
        args.out_dir,
        {"train": args.train, "val": args.val, "test": args.test},
        resolution=args.resolution,
        seed=args.seed,
    )
    print(out)
    return 0


def _tasks(value: str | None) -> list[str] | None:
    return None if value is None else [t.strip() for t in value.split(",") if t.strip()]


def cmd_export_bundle(args: argparse.Namespace) -> int:
    from probebench.bundles import export_bundle

    out = export_bundle(
        args.run_dir,
        args.out,
        variant=args.variant,
        model=args.model,
        tasks=_tasks(args.tasks),
        stage_label=args.stage_label,
        cache_dir=args.cache_dir,
        force=args.force,
    )
    print(out)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from probebench.generate import GenerateConfig, generate

    prompts = args.prompt
    if args.prompts_file is not None:
        if prompts:
            raise ProbebenchError("Give --prompt or --prompts-file, not both.")
        prompts = [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    cfg = GenerateConfig(
        bundle=args.bundle,
        out=args.out,
        num_samples=args.num_samples,
        prompts=prompts or [""],
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
        tasks=_tasks(args.tasks),
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
        name=args.name,
    )
    distributed = _maybe_init_distributed(args.device)
    try:
        out = generate(cfg, progress=not args.no_progress)
    finally:
        if distributed:
            import torch.distributed

            torch.distributed.destroy_process_group()
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # report against the subcommand's own options, which is where the user meant them
        sub = parser
        for dest in ("command", "scenes_command"):
            action = next((a for a in sub._actions if getattr(a, "dest", None) == dest), None)
            name = getattr(args, dest, None)
            if action is not None and name in (action.choices or {}):
                sub = action.choices[name]
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    handlers = {
        "list": cmd_list,
        "extract": cmd_extract,
        "run": cmd_run,
        "analyze": cmd_analyze,
        "scenes": cmd_scenes,
        "sweep": cmd_sweep,
        "fit": lambda a: cmd_run(a, extract=False),
        "check-backbone": cmd_check_backbone,
        "export-bundle": cmd_export_bundle,
        "generate": cmd_generate,
    }
    try:
        plugins = [p for dest in ("plugin", "plugin_1", "plugin_2") for p in getattr(args, dest, [])]
        if plugins:
            from probebench.core.plugins import add_to_env, load_plugins

            load_plugins(plugins, origin="--plugin")
            add_to_env(plugins)  # child processes (sweep workers, torchrun ranks) load them too
        return handlers[args.command](args)
    except (ProbebenchError, ValueError, FileNotFoundError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"probebench: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("probebench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
