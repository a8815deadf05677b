"""Generation benchmarks (``probebench generate``; targets from issue 23), measured in one run on tiny-mmdit, CPU:

1. generation with labels ÷ plain sampling — ≤ 1.15. Generation: ``Generator.run`` on one batch (feature capture
   in the sampling pass, the extra σ = 0 forward, the heads' decoding; no files written). Plain: the same
   ``adapter.sampling_pipeline()`` called directly without hooks on the same noise levels (the plan with the
   heads' σ inserted), batch, initial latents and prompt embeddings, ``output_type="latent"`` then the same VAE
   decode. Median of interleaved pairs (plain, generation, plain, ...) after a warm-up. Reported beside it, each
   ÷ the plain time of the same pair: the σ = 0 forward as generation runs it (early exit at the heads' last
   block), one full transformer forward on the batch, and the heads' decoding.
2. peak RSS of ``probebench generate`` of --large samples ÷ --small samples (the whole path, files written), each
   in a fresh process: a wrapper runs the CLI and reads its child's ru_maxrss (RUSAGE_CHILDREN) — ≤ 1.10.
3. samples/s of ``torchrun --nproc_per_node=2`` ÷ one process (1 thread per process; and one process on --threads
   threads, what the machine gives one process), and whether the output folders are byte-identical (sha256 of
   every file, .generate/ state, dataset.yaml and contact_sheet.png included). Samples/s are given over the whole
   command (start-up included) and over the sampling window (the first rank's settings.json, written once the
   model is built, to the last done marker), which leaves out start-up and the contact sheet.

The bundle is made here from a small tiny-mmdit run (spatial fusion heads on block 4 at σ 0, 0.35 and 0.7) unless
--bundle gives one. Timings are the machine's at the time: other jobs on it change them (the load average is
printed before and after).

Usage: python benchmarks/bench_generate.py [--quick] [--threads N] [--steps N] [--batch-size B]
       [--large 512 --small 64] [--dist-samples 64] [--bundle PATH] [--skip-rss] [--skip-dist]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# full run / --quick (a smoke run of a few minutes); an option given on the command line wins over both
PRESETS = {
    "full": {
        "steps": None,
        "batch_size": 8,
        "repeat": 5,
        "large": 512,
        "small": 64,
        "dist_samples": 64,
        "train": 16,
    },
    "quick": {
        "steps": 4,
        "batch_size": 2,
        "repeat": 3,
        "large": 8,
        "small": 2,
        "dist_samples": 8,
        "train": 8,
    },
}

# the wrapper of one measured child: runs argv[1:], then prints the child's peak RSS (KiB) and wall time
RSS_WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=sys.stderr).returncode
print(json.dumps({"rc": rc, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "wall_s": time.perf_counter() - t}))
"""


def build_bundle(work: Path, train: int) -> Path:
    """A small tiny-mmdit run with spatial fusion heads for segmentation, saliency and depth (block 4 at σ 0,
    0.35, 0.7: the σ = 0 forward and two capture steps) and its exported bundle. One block: export-bundle does not
    find the validation rows of a head over several blocks and several σ (its row label repeats them)."""
    from probebench.bundles import export_bundle
    from probebench.config import load_config
    from probebench.pipeline import run

    cfg = load_config(
        None,
        [
            f"data.max_train={train}",
            f"data.max_val={max(train // 2, 2)}",
            f"data.max_test={max(train // 2, 2)}",
            "probe_seeds=[0]",
            "backbones=[{name: tiny-mmdit, weights: default, layers: [4], timesteps: [0.0, 0.35, 0.7], "
            "image_size: null, dtype: float32}]",
            "probes=[{name: fusion, cells: all, params: {mode: spatial, epochs: 2, patience: 0}}]",
            f"extract.cache_dir={work / 'cache'}",
            f"output_dir={work / 'results'}",
            "name=bench-generate",
        ],
    )
    out = run(cfg, progress=False)
    return export_bundle(out, work / "bundle", force=True)


def plain_sampling(gen, indices: list[int]) -> torch.Tensor:
    """The reference: the family's pipeline on the generator's noise levels, latents and prompts, no hooks, then
    the VAE decode — what ``sample_with_features`` does less the capture, the σ = 0 forward and the heads."""
    from backbones.diffusion.sampling import decode_latents

    a, cfg, n = gen.adapter, gen.cfg, len(indices)
    conds = [a.encode_text(gen.prompt(i)) for i in indices]
    negative = None if cfg.negative_prompt is None else a.encode_text(cfg.negative_prompt)
    latents = torch.stack([gen.noise(i) for i in indices]).to(a.device, a.transformer.dtype)
    with torch.inference_mode():
        pipe = a.sampling_pipeline()
        if hasattr(a, "sampling_arguments"):  # the families' own pipeline arguments
            levels = "sigmas" if getattr(gen.plan, "convention", "flow") == "flow" else "timesteps"
            out = pipe(
                **a.sampling_arguments(conds, float(cfg.guidance), negative, n),
                **{levels: list(gen.plan.sigmas)},
                latents=latents,
                height=a.image_size,
                width=a.image_size,
                output_type="latent",
            )
            return decode_latents(a, a.sampling_unpack(out.images).float())
        from backbones.diffusion.adapter import stack_conditioning

        dtype = a.transformer.dtype
        embeds, pooled, _ = stack_conditioning(conds, a.device, dtype)
        extra = {}
        if cfg.guidance > 1.0:
            neg = a.text if negative is None else negative
            neg_embeds, neg_pooled, _ = stack_conditioning([neg] * n, a.device, dtype)
            extra = {"negative_prompt_embeds": neg_embeds, "negative_pooled_prompt_embeds": neg_pooled}
        out = pipe(
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            guidance_scale=float(cfg.guidance),
            sigmas=list(gen.plan.sigmas),
            latents=latents,
            output_type="latent",
            **extra,
        )
        return decode_latents(a, out.images.float())


def bench_overhead(bundle: Path, args: argparse.Namespace, res: dict) -> None:
    from backbones.diffusion.sampling import sample_with_features
    from probebench.generate import GenerateConfig, Generator
    from probes.bundle import decode_heads

    cfg = GenerateConfig(
        bundle=str(bundle),
        out="unused",
        steps=args.steps,
        batch_size=args.batch_size,
        prompts=args.prompt or [""],
        guidance=args.guidance,
    )
    gen = Generator.build(cfg)
    a = gen.adapter
    batch = list(range(args.batch_size))
    n = len(batch)
    layers = a.resolve_layers(gen.bundle.layers())
    conds = [a.encode_text(gen.prompt(i)) for i in batch]
    t0 = a.model_timesteps([0.0], n)
    traj = sample_with_features(  # the final latents and the features the σ = 0 and decoding arms reuse
        a,
        torch.stack([gen.noise(i) for i in batch]),
        gen.plan,
        gen.bundle.layers(),
        decode=False,
        conditioning=conds,
        guidance=cfg.guidance,
    )
    z0, size = traj.latents, (a.image_size, a.image_size)

    def conditioned():  # the samples' own prompts for a forward outside the pipeline
        if hasattr(a, "sampling_conditioning"):
            return a.sampling_conditioning(conds, n)
        return a.batch_conditioning(conds)

    def clean_forward():  # the σ = 0 forward as sample_with_features runs it (hooks, early exit)
        with torch.inference_mode(), conditioned():
            a.forward_features(z0, t0, layers)

    def full_forward():  # one whole transformer forward on the batch
        with torch.inference_mode(), conditioned():
            a.run_transformer(z0.to(a.transformer.dtype), t0)

    def heads():  # as Generator.run decodes
        decoded = decode_heads(gen.bundle, gen.nets, traj.features, size)
        return {
            t: h.target_spec.target_kind.as_target(decoded[t], h.target_spec)
            for t, h in gen.bundle.heads.items()
        }

    def clock(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    plain_sampling(gen, batch), gen.run(batch), clean_forward(), full_forward(), heads()  # warm-up
    rows = []
    for _ in range(args.repeat):
        t_plain, plain_images = clock(lambda: plain_sampling(gen, batch))
        t_gen, (gen_images, _, forwards) = clock(lambda: gen.run(batch))
        rows.append((t_plain, t_gen, clock(clean_forward)[0], clock(full_forward)[0], clock(heads)[0]))
    t = np.array(rows)
    ratio = t[:, 1] / t[:, 0]
    res["overhead"] = {
        "sampler_steps": len(gen.plan.sigmas),
        "capture_steps": {int(k): float(v) for k, v in sorted(gen.plan.capture.items())},
        "clean_forward": bool(gen.plan.clean),
        "forwards": forwards,
        "layers": layers,
        "tasks": gen.bundle.tasks,
        "image_size": a.image_size,
        "plain_s": float(np.median(t[:, 0])),
        "generate_s": float(np.median(t[:, 1])),
        "generate_over_plain": float(np.median(ratio)),
        "generate_over_plain_range": [float(ratio.min()), float(ratio.max())],
        "clean_forward_s": float(np.median(t[:, 2])),
        "clean_forward_over_plain": float(np.median(t[:, 2] / t[:, 0])),
        "full_forward_s": float(np.median(t[:, 3])),
        "full_forward_over_plain": float(np.median(t[:, 3] / t[:, 0])),
        "heads_s": float(np.median(t[:, 4])),
        "heads_over_plain": float(np.median(t[:, 4] / t[:, 0])),
        # the capture hooks' share: what generation costs beyond plain sampling, the σ = 0 forward and the heads
        "capture_over_plain": float(np.median((t[:, 1] - t[:, 0] - t[:, 2] - t[:, 4]) / t[:, 0])),
        # the two arms compute the same images (the hooks only read): a check that they time the same sampling
        "images_identical": bool(np.array_equal(plain_images.permute(0, 2, 3, 1).cpu().numpy(), gen_images)),
    }
    res["settings"]["steps"] = gen.steps


def cli_generate(bundle: Path, out: Path, n: int, args: argparse.Namespace) -> list[str]:
    cmd = ["-m", "probebench.cli", "generate", str(bundle), "--out", str(out), "-n", str(n)]
    cmd += ["--batch-size", str(args.batch_size), "--guidance", str(args.guidance), "--no-progress"]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    for p in args.prompt or []:
        cmd += ["--prompt", p]
    return cmd


def child_env(threads: int) -> dict[str, str]:
    """The children's threads, and this checkout's modules first (as the measuring process imports them)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONPATH": path,
    }


def fail(what: str, proc: subprocess.CompletedProcess) -> None:
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    raise SystemExit(f"{what} failed with exit status {proc.returncode}:\n{tail}")


def count_done(out: Path) -> int:
    return len(list((out / ".generate" / "done").glob("*.json")))


def bench_rss(bundle: Path, work: Path, args: argparse.Namespace, res: dict) -> None:
    rss = {}
    for n in (args.small, args.large):
        out = work / f"rss-{n}"
        shutil.rmtree(out, ignore_errors=True)  # a kept --workdir: a fresh generation, not a resume
        cmd = [sys.executable, "-c", RSS_WRAPPER, sys.executable, *cli_generate(bundle, out, n, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env(args.threads))
        if proc.returncode != 0 or json.loads(proc.stdout.splitlines()[-1])["rc"] != 0:
            fail(f"generate -n {n}", proc)
        child = json.loads(proc.stdout.splitlines()[-1])
        if count_done(out) != n or not (out / "dataset.yaml").is_file():
            raise SystemExit(f"generate -n {n} left {count_done(out)} samples in {out}, expected {n}.")
        rss[n] = child
    res["rss"] = {
        "small": args.small,
        "large": args.large,
        "small_MiB": rss[args.small]["maxrss_kib"] / 1024,
        "large_MiB": rss[args.large]["maxrss_kib"] / 1024,
        "large_over_small": rss[args.large]["maxrss_kib"] / rss[args.small]["maxrss_kib"],
        "small_wall_s": rss[args.small]["wall_s"],
        "large_wall_s": rss[args.large]["wall_s"],
    }


def folder_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def bench_dist(bundle: Path, work: Path, args: argparse.Namespace, res: dict) -> None:
    n = args.dist_samples
    settings = [(1, 1), (2, 1)] + ([(1, args.threads)] if args.threads != 1 else [])
    runs, hashes = {}, {}
    for procs, threads in settings:
        name = f"{procs}proc-x{threads}thread"
        out = work / f"dist-{name}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        cmd += cli_generate(bundle, out, n, args)
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env(threads))
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            fail(f"torchrun --nproc_per_node={procs} generate", proc)
        if count_done(out) != n or not (out / "dataset.yaml").is_file():
            raise SystemExit(f"{name} left {count_done(out)} samples in {out}, expected {n}.")
        start = (out / ".generate" / "settings.json").stat().st_mtime
        end = max(p.stat().st_mtime for p in (out / ".generate" / "done").glob("*.json"))
        runs[name] = {
            "processes": procs,
            "threads_per_process": threads,
            "wall_s": wall,
            "samples_per_s": n / wall,
            "window_s": end - start,
            "window_samples_per_s": n / (end - start),
            "files": 0,
        }
        hashes[name] = folder_hashes(out)
        runs[name]["files"] = len(hashes[name])
    two, one = runs["2proc-x1thread"], runs["1proc-x1thread"]
    same = {}
    for other in [k for k in runs if k != "2proc-x1thread"]:
        a, b = hashes["2proc-x1thread"], hashes[other]
        same[f"2proc-x1thread vs {other}"] = {
            "identical": a == b,
            "differing": sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[:8],
        }
    res["dist"] = {
        "samples": n,
        "runs": runs,
        "speedup_2proc_over_1proc_1thread": two["samples_per_s"] / one["samples_per_s"],
        "window_speedup_2proc_over_1proc_1thread": two["window_samples_per_s"] / one["window_samples_per_s"],
        "identical": same,
    }
    if args.threads != 1:
        many = runs[f"1proc-x{args.threads}thread"]
        res["dist"]["speedup_2proc_over_1proc_threads"] = two["samples_per_s"] / many["samples_per_s"]
        res["dist"]["window_speedup_2proc_over_1proc_threads"] = (
            two["window_samples_per_s"] / many["window_samples_per_s"]
        )


def print_table(res: dict, args: argparse.Namespace) -> None:
    s = res["settings"]
    print(
        f"settings: steps {s['steps']} ({res.get('overhead', {}).get('sampler_steps', '?')} sampler steps with the "
        f"heads' σ), batch {s['batch_size']}, threads {s['threads']}, guidance {s['guidance']}, torch "
        f"{s['torch']}, diffusers {s['diffusers']}, CPUs {s['cpu_count']} (usable {s['cpus_usable']}), load "
        f"average {s['loadavg_start']:.2f} → {s['loadavg_end']:.2f}"
    )
    if "overhead" in res:
        o = res["overhead"]
        lo, hi = o["generate_over_plain_range"]
        print(
            f"generation / plain sampling     : {o['generate_over_plain']:.3f}  (target <= 1.15; median of "
            f"{args.repeat} interleaved pairs, range {lo:.3f}-{hi:.3f}; {o['generate_s']:.3f} s vs "
            f"{o['plain_s']:.3f} s per batch of {s['batch_size']})"
        )
        print(
            f"  σ=0 forward / plain sampling  : {o['clean_forward_over_plain']:.3f}  (early exit at block "
            f"{max(o['layers'])}; a full forward: {o['full_forward_over_plain']:.3f}"
            + ("" if o["clean_forward"] else "; this bundle reads no σ = 0, generation skips it")
            + ")"
        )
        print(f"  head decoding / plain sampling: {o['heads_over_plain']:.3f}  ({', '.join(o['tasks'])})")
        print(f"  capture hooks (the rest)      : {o['capture_over_plain']:.3f}")
        print(f"  plain and generated images identical: {o['images_identical']}")
    if "rss" in res:
        r = res["rss"]
        print(
            f"peak RSS {r['large']} / {r['small']} samples     : {r['large_over_small']:.3f}  (target <= 1.10; "
            f"{r['large_MiB']:.1f} MiB vs {r['small_MiB']:.1f} MiB)"
        )
    if "dist" in res:
        d = res["dist"]
        for name, r in d["runs"].items():
            print(
                f"{name:<16}: {r['samples_per_s']:.3f} samples/s over {r['wall_s']:.1f} s; sampling window "
                f"{r['window_samples_per_s']:.3f} samples/s over {r['window_s']:.1f} s"
            )
        print(
            f"2 processes / 1 process (1 thread each)  : {d['speedup_2proc_over_1proc_1thread']:.3f}  "
            f"(window {d['window_speedup_2proc_over_1proc_1thread']:.3f})"
        )
        if "speedup_2proc_over_1proc_threads" in d:
            print(
                f"2×1 thread / 1 process × {args.threads} threads     : "
                f"{d['speedup_2proc_over_1proc_threads']:.3f}  "
                f"(window {d['window_speedup_2proc_over_1proc_threads']:.3f})"
            )
        for pair, v in d["identical"].items():
            extra = "" if v["identical"] else f"; differing: {', '.join(v['differing'])}"
            print(f"byte-identical {pair}: {v['identical']}{extra}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, tiny sample counts")
    p.add_argument("--bundle", default=None, help="a bundle to use (default: build one from a small run)")
    p.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads of the measuring process and of each single-process run (default: the machine's, "
        "%(default)s here)",
    )
    p.add_argument("--steps", type=int, default=None, help="sampling steps (full default: the family's)")
    p.add_argument("--batch-size", type=int, default=None, help="full default 8, quick 2")
    p.add_argument("--repeat", type=int, default=None, help="interleaved pairs (full 5, quick 3)")
    p.add_argument("--large", type=int, default=None, help="peak-RSS run, large (full 512, quick 8)")
    p.add_argument("--small", type=int, default=None, help="peak-RSS run, small (full 64, quick 2)")
    p.add_argument(
        "--dist-samples", type=int, default=None, help="samples per torchrun run (full 64, quick 8)"
    )
    p.add_argument("--prompt", action="append", default=None, help="repeatable (default: the empty prompt)")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument(
        "--workdir", default=None, help="keep the run, bundle and outputs here (default: a temp dir)"
    )
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--skip-dist", action="store_true")
    args = p.parse_args()
    preset = PRESETS["quick" if args.quick else "full"]
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import diffusers

    res: dict = {
        "settings": {
            "preset": "quick" if args.quick else "full",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "guidance": args.guidance,
            "prompts": args.prompt or [""],
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "loadavg_start": os.getloadavg()[0],
        }
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.bundle:
            bundle = Path(args.bundle)
        else:
            t = time.perf_counter()
            bundle = build_bundle(work / "run", args.train)
            res["settings"]["bundle_build_s"] = time.perf_counter() - t
        res["settings"]["bundle"] = str(bundle)
        t = time.perf_counter()
        bench_overhead(bundle, args, res)
        res["overhead"]["bench_s"] = time.perf_counter() - t
        if not args.skip_rss:
            bench_rss(bundle, work, args, res)
        if not args.skip_dist:
            bench_dist(bundle, work, args, res)
    res["settings"]["loadavg_end"] = os.getloadavg()[0]
    res["settings"]["total_s"] = time.perf_counter() - started
    print(json.dumps(res, indent=1))
    print_table(res, args)


if __name__ == "__main__":
    main()
