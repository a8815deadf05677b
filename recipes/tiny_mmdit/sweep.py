"""Recipe sweep: train several variants of the shipped tiny-MM-DiT recipe side by side, then score and sample
each exactly as the shipped model is scored and sampled.

    python -m recipes.tiny_mmdit.sweep --out /tmp/sweep --deadline-minutes 6.5 \\
        --variant A:32:5e-4 --variant B:256:5e-4 --variant C:32:1e-3 --variant E:32:1e-3:logit_mean=-1.0

A variant is ``NAME:BATCH:LR[:field=value,...]``: the shipped run's training config (read from the shipped
weight file) with the batch size, peak learning rate and any other :class:`~recipes.tiny_mmdit.train.TrainConfig`
fields replaced. Every variant uses the same seed, pool, autoencoder and schedule (warmup + cosine over
``steps``) and stops at ``--stop-at`` (default: the shipped run's last step) or at the deadline, whichever
comes first; results.json says which.

On a GPU each variant gets its own CUDA stream and its whole training step (forward, backward, gradient
clipping, AdamW, EMA) captured once as a CUDA graph, so the small variants run concurrently on one device; the
batch is drawn outside the graph from the variant's own generator. On a CPU the variants take turns (eager
steps). Either way the variants never share random numbers, so a variant's result does not depend on which
others run beside it (tested on the CPU). The GPU numbers are not bit-identical to a CPU run of the same recipe.

Scoring runs on the CPU for every device: the validation loss of :func:`recipes.tiny_mmdit.train.validation_loss`
(fixed val images, σ grid and noise — the number the shipped run reports) and the sample grid of
:func:`recipes.tiny_mmdit.train.render_samples` (same noise as ``backbones/tiny/weights/samples.png``).

Outputs in ``--out``: ``results.json`` (per variant: config, steps, val loss, training-loss log, whether a
graph was used, and why it stopped), ``samples_<NAME>.png``, and ``weights_<NAME>.safetensors`` for the
variants named in ``--save-weights`` (EMA weights, fp16, without the autoencoder: ``load_weights`` reads them).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import multiprocessing as mp
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.tiny.model import DEFAULT_WEIGHTS, PAD_ID, build, load_vae, read_metadata, save_weights
from recipes.tiny_mmdit import train as T

_T0 = time.perf_counter()
# fields every variant shares: the pool, its latents and the val set are made once, from the shipped run's config
FIXED_FIELDS = frozenset({"resolution", "vae", "pool_size", "data_seed", "val_images", "start_step"})


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def parse_variant(spec: str, base: T.TrainConfig) -> tuple[str, T.TrainConfig]:
    """``NAME:BATCH:LR[:field=value,...]`` → (name, config): ``base`` with those fields replaced."""
    parts = spec.split(":")
    if len(parts) not in (3, 4) or not parts[0]:
        raise ValueError(f"variant {spec!r}: expected NAME:BATCH:LR[:field=value,...]")
    name, batch, lr = parts[:3]
    try:
        over: dict[str, Any] = {"batch_size": int(batch), "lr": float(lr)}
    except ValueError:
        raise ValueError(f"variant {spec!r}: BATCH must be an integer and LR a number") from None
    fields = {f.name: f for f in dataclasses.fields(T.TrainConfig)}
    for kv in parts[3].split(",") if len(parts) == 4 else []:
        key, sep, value = kv.partition("=")
        if not sep or key not in fields:
            raise ValueError(
                f"variant {spec!r}: {kv!r} is not field=value of a TrainConfig field "
                f"(known: {', '.join(sorted(set(fields) - FIXED_FIELDS))})"
            )
        if key in FIXED_FIELDS:
            raise ValueError(
                f"variant {spec!r}: {key} is shared by all variants (the pool, its latents and the val set "
                f"are made once), fixed at {getattr(base, key)!r}"
            )
        kind = type(getattr(base, key))
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"variant {spec!r}: {key} must be true or false, got {value!r}")
            over[key] = value.lower() in ("true", "1")
        else:
            try:
                over[key] = kind(value)
            except ValueError:
                raise ValueError(f"variant {spec!r}: {key} must be {kind.__name__}, got {value!r}") from None
    if over["batch_size"] < 1 or not over["lr"] > 0:
        raise ValueError(f"variant {spec!r}: BATCH must be ≥ 1 and LR > 0")
    for key, value in over.items():
        low = 0 if key in ("warmup", "seed", "slg_layer") else 1
        if type(value) is int and value < low:
            raise ValueError(f"variant {spec!r}: {key} must be ≥ {low}, got {value}")
    cfg = dataclasses.replace(base, **over)
    try:
        cfg.check()
    except ValueError as e:
        raise ValueError(f"variant {spec!r}: {e}") from None
    if cfg.repa_weight > 0:
        raise ValueError(
            f"variant {spec!r}: repa_weight {cfg.repa_weight} — the sweep trains without representation "
            "alignment (it computes no EfficientNet targets); train such a run with python -m recipes.tiny_mmdit.train"
        )
    return name, cfg


def _render_chunk(job: tuple[str, int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    split, start, n, res, seed = job
    return T.render_pool(split, n, res, seed, offset=start)


def render_parallel(split: str, n: int, res: int, seed: int, procs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`recipes.tiny_mmdit.train.render_pool` split over ``procs`` processes (scenes render by index, so the
    pool is the same)."""
    if procs <= 1:
        return T.render_pool(split, n, res, seed)
    chunk = math.ceil(n / procs)
    jobs = [(split, s, min(chunk, n - s), res, seed) for s in range(0, n, chunk)]
    with mp.get_context("fork").Pool(len(jobs)) as pool:
        parts = pool.map(_render_chunk, jobs)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class Variant:
    """One recipe variant: model, EMA, AdamW, generator and static batch buffers on ``device``."""

    def __init__(
        self,
        name: str,
        cfg: T.TrainConfig,
        stop_at: int,
        latents: torch.Tensor,
        ids: torch.Tensor,
        device: torch.device,
    ):
        self.name, self.cfg, self.stop_at, self.device = name, cfg, stop_at, device
        self.latents, self.ids = latents, ids
        transformer, caption = build(cfg.model_config(), seed=cfg.seed)
        self.net = T.Denoiser(transformer, caption).to(device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.params = list(self.net.parameters())
        self.ema_params = list(self.ema.parameters())
        cuda = device.type == "cuda"
        # on a GPU the learning rate lives in a tensor, so the captured optimiser step reads each step's value
        self.lr_t = torch.tensor(cfg.lr, device=device) if cuda else None
        self.opt = torch.optim.AdamW(
            T.adamw_param_groups(self.net, cfg.weight_decay),
            lr=self.lr_t if cuda else cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=1e-8,
            capturable=cuda,
            foreach=True,
        )
        if cuda:
            for group in self.opt.param_groups:
                group["lr"] = self.lr_t
        self.ema_w = torch.zeros((), device=device)  # 1 − EMA decay of the current step
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        b = cfg.batch_size
        c, r = int(transformer.config.in_channels), int(transformer.config.sample_size)
        self.x0 = torch.zeros(b, c, r, r, device=device)
        self.noise = torch.zeros(b, c, r, r, device=device)
        self.sigma = torch.full((b,), 0.5, device=device)
        self.bids = torch.zeros(b, ids.shape[1], dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.loss_n = 0
        self.step_count = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_loss: torch.Tensor | None = None
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.rows: list[dict[str, float]] = []
        self.stopped_by = "stop_at"

    def draw_batch(self) -> None:
        """Next batch, σ, ε, learning rate and EMA weight into the static buffers (from this variant's generator)."""
        c, g, b, dev = self.cfg, self.gen, self.cfg.batch_size, self.device
        idx = torch.randint(self.ids.shape[0], (b,), generator=g, device=dev)
        if c.hflip:
            flip = (torch.rand(b, generator=g, device=dev) < 0.5).long()
        else:
            flip = torch.zeros(b, dtype=torch.long, device=dev)
        self.x0.copy_(self.latents[flip, idx])
        drop = torch.rand(b, generator=g, device=dev) < c.caption_dropout
        self.bids.copy_(torch.where(drop[:, None], PAD_ID, self.ids[idx]))
        self.sigma.copy_(torch.sigmoid(torch.randn(b, generator=g, device=dev) * c.logit_std + c.logit_mean))
        self.noise.normal_(generator=g)
        lr = T.warmup_cosine(
            self.step_count - c.start_step, c.lr, c.warmup, c.steps - c.start_step, c.min_lr_ratio
        )
        if self.lr_t is not None:
            self.lr_t.fill_(lr)
        else:
            for group in self.opt.param_groups:
                group["lr"] = lr
        self.ema_w.fill_(1.0 - T.ema_decay_at(self.step_count + 1, c.ema_decay))

    def update(self) -> torch.Tensor:
        """Loss, backward, clipping, AdamW and EMA on the static buffers (the part a CUDA graph captures)."""
        loss = T.flow_loss(self.net, self.x0, self.bids, self.sigma, self.noise, self.cfg.bf16)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
        self.opt.step()
        with torch.no_grad():  # EMA ← EMA + (1 − decay)·(θ − EMA), outside autograd
            delta = torch._foreach_sub(self.params, self.ema_params)
            torch._foreach_mul_(delta, self.ema_w)
            torch._foreach_add_(self.ema_params, delta)
        return loss.detach()

    def eager_step(self) -> None:
        self.draw_batch()
        self.opt.zero_grad(set_to_none=True)
        self.loss_sum += self.update()
        self.loss_n += 1
        self.step_count += 1

    def capture(self, warmup_steps: int = 3) -> None:
        """A few eager steps on this variant's stream (they count), then capture :meth:`update` as a graph."""
        assert self.stream is not None
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            for _ in range(min(warmup_steps, self.stop_at)):
                self.eager_step()
        torch.cuda.current_stream().wait_stream(self.stream)
        torch.cuda.synchronize()
        self.opt.zero_grad(set_to_none=True)  # the captured backward writes (not accumulates) the gradients
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_loss = self.update()
        torch.cuda.synchronize()
        self.graph = graph

    def step(self) -> None:
        if self.graph is None:
            self.eager_step()
            return
        self.draw_batch()
        self.graph.replay()
        self.loss_sum += self.static_loss
        self.loss_n += 1
        self.step_count += 1

    def flush_log(self, wall_s: float) -> None:
        if self.loss_n:
            mean = float(self.loss_sum) / self.loss_n
            self.rows.append({"step": self.step_count, "wall_s": round(wall_s, 1), "loss": round(mean, 5)})
            with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
                self.loss_sum.zero_()
            self.loss_n = 0

    @property
    def done(self) -> bool:
        return self.step_count >= self.stop_at


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--variant", action="append", required=True, help="NAME:BATCH:LR[:field=value,...] (repeatable)"
    )
    p.add_argument("--stop-at", type=int, help="last step of every variant (default: the shipped run's)")
    p.add_argument("--deadline-minutes", type=float, default=60.0, help="stop training after this wall time")
    p.add_argument("--pool-size", type=int, help="train pool size (default: the shipped run's)")
    p.add_argument("--procs", type=int, default=1, help="processes rendering the pool")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-graph", action="store_true", help="eager steps on a GPU too")
    p.add_argument("--save-weights", default="", help="comma-separated variant names whose weights to write")
    p.add_argument("--log-every", type=int, default=2000, help="steps per training-loss row")
    args = p.parse_args(argv)
    for flag in ("stop_at", "pool_size", "procs", "log_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if not args.deadline_minutes >= 0:
        p.error(f"--deadline-minutes must be ≥ 0, got {args.deadline_minutes}")
    names = [v.split(":")[0] for v in args.variant]
    if len(set(names)) != len(names):
        p.error(f"variant names must differ, got {names}")
    unknown = set(filter(None, args.save_weights.split(","))) - set(names)
    if unknown:
        p.error(f"--save-weights names no variant: {sorted(unknown)} (variants: {names})")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    meta = read_metadata(DEFAULT_WEIGHTS)["extra"]
    base = T.shipped_config()
    if args.pool_size is not None:
        base = dataclasses.replace(base, pool_size=args.pool_size)
    try:
        variants_cfg = [parse_variant(spec, base) for spec in args.variant]
    except ValueError as e:
        raise SystemExit(str(e)) from None
    for name, cfg in variants_cfg:  # a model that cannot be built fails here, before the pool is rendered
        try:
            cfg.model_config()
        except ValueError as e:
            raise SystemExit(f"variant {name}: {e}") from None
    stop_at = args.stop_at or int(meta["step"])
    args.out.mkdir(parents=True, exist_ok=True)
    # render before the device is touched: the pool is forked
    images, ids = render_parallel("train", base.pool_size, base.resolution, base.data_seed, args.procs)
    dev = torch.device(args.device)
    if dev.type == "cuda":  # streams, capture and synchronize act on the current device
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    _log(f"rendered {images.shape[0]} train images; device {dev}, torch {torch.__version__}")
    vae = load_vae(base.vae)
    if vae is None:
        raise SystemExit(f"{base.vae}: the shipped run's autoencoder file has no autoencoder")
    latents = T.encode_pool(vae.to(dev), images, batch=1000)
    vae = vae.cpu()
    val_images, val_ids = T.render_pool("val", base.val_images, base.resolution, base.data_seed)
    val_x0 = T.encode_pool(vae, val_images)[0]
    ids_dev = ids.to(dev)
    variants = [Variant(name, cfg, stop_at, latents, ids_dev, dev) for name, cfg in variants_cfg]
    for v in variants:
        changed = {k: x for k, x in dataclasses.asdict(v.cfg).items() if getattr(base, k) != x}
        _log(f"variant {v.name}: {changed or 'the shipped recipe'}")
    if dev.type == "cuda" and not args.no_graph:
        try:
            for v in variants:
                v.capture()
            _log("captured one CUDA graph per variant")
        except Exception as e:  # any capture failure falls back to eager steps, said aloud
            _log(f"graph capture failed ({type(e).__name__}: {e}); eager steps")
            for v in variants:
                v.graph = None
            torch.cuda.synchronize()
    t_train = time.perf_counter()
    deadline = t_train + args.deadline_minutes * 60.0
    # steps per turn: a GPU queues many graph replays between synchronisations; a CPU takes short turns so that
    # the deadline is checked often; no turn crosses a log boundary
    chunk = 250 if dev.type == "cuda" else 10
    active = [v for v in variants if not v.done]
    while active:
        for v in active:
            n = min(chunk, v.stop_at - v.step_count, args.log_every - v.step_count % args.log_every)
            with torch.cuda.stream(v.stream) if v.stream is not None else contextlib.nullcontext():
                for _ in range(n):
                    v.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        for v in list(active):
            if v.step_count % args.log_every == 0 or v.done:
                v.flush_log(now - t_train)
            if v.done:
                active.remove(v)
                _log(f"{v.name} reached step {v.step_count}")
        if active and now > deadline:
            for v in active:
                v.flush_log(now - t_train)
                v.stopped_by = "deadline"
                _log(f"{v.name} stopped by the deadline at step {v.step_count}")
            break
    train_s = time.perf_counter() - t_train
    total = sum(v.step_count for v in variants)
    _log(
        f"trained {total} steps in {train_s:.0f} s ({total / max(train_s, 1e-9):.0f} steps/s over all variants)"
    )
    save = set(filter(None, args.save_weights.split(",")))

    def record(cfg: T.TrainConfig) -> dict[str, Any]:  # the config as the shipped run records it
        return {**dataclasses.asdict(cfg), "vae": meta["training"]["vae"]}

    results: dict[str, Any] = {}
    for v in variants:
        net = v.ema.float().cpu()
        val = T.validation_loss(net, val_x0, val_ids, bf16=v.cfg.bf16)
        _log(f"{v.name}: step {v.step_count} ({v.stopped_by}), val loss {val:.4f}")
        T.render_samples(v.cfg, net, args.out / f"samples_{v.name}.png", vae)
        if v.name in save:
            save_weights(
                args.out / f"weights_{v.name}.safetensors",
                net.transformer,
                net.caption,
                v.cfg.model_config(),
                extra={
                    "step": v.step_count,
                    "val_loss": val,
                    "training": record(v.cfg),
                    "trained_on": str(dev),
                    "sweep": True,
                },
            )
        results[v.name] = {
            "config": record(v.cfg),
            "steps": v.step_count,
            "stopped_by": v.stopped_by,
            "val_loss": val,
            "log": v.rows,
            "cuda_graph": v.graph is not None,
        }
    results["_run"] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "train_s": round(train_s, 1),
        "stop_at": stop_at,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
