"""The GPU benchmark's smoke run: ``benchmarks/bench_gpu.py --tiny --device cpu`` measures through the real
adapters and reports every column with finite numbers, so the script is ready to run unchanged on a GPU."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import backbones
from probebench.core.errors import ProbebenchError

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = ("build_s", "extract_s", "bare_s", "images_per_s", "tflops", "mfu", "extract_over_bare", "params_M")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_reports_every_column(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = (
        "--tiny --device cpu --models dit-xl-2-256,flux.1-dev --batch 2 --repeat 2 --warmup 0 --peak-tflops 2"
    )
    rows = bench.main([*argv.split(), "--markdown", "--json", str(out)])

    assert [r["model"] for r in rows] == ["dit-xl-2-256", "flux.1-dev"]
    for r in rows:
        assert r["config"] == "tiny" and r["dtype"] == "bfloat16" and r["batch"] == 2 and r["px"] == 64
        assert r["flops_per_batch"] > 0
        for key in NUMBERS:
            assert math.isfinite(r[key]) and r[key] > 0, (r["model"], key, r[key])
        assert r["images_per_s"] == pytest.approx(2 / r["extract_s"])
        assert r["tflops"] == pytest.approx(r["flops_per_batch"] / r["extract_s"] / 1e12)
        assert r["mfu"] == pytest.approx(r["tflops"] / 2)
        lo, hi = r["extract_over_bare_range"]
        assert lo <= r["extract_over_bare"] <= hi
        assert r["peak_vram_gib"] is None  # measured on CUDA only
        assert len(r["timesteps"]) == 4  # the family's default timesteps
    # the default layers are spread up to the last block (tiny DiT: 3 blocks, tiny FLUX: 2 + 2)
    assert [r["layers"] for r in rows] == [[0, 1, 2], [0, 1, 2, 3]]
    assert json.loads(out.read_text()) == json.loads(json.dumps(rows))

    printed = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["model"] for line in printed[:2]] == ["dit-xl-2-256", "flux.1-dev"]
    header, rule, *table = printed[2:]
    assert header.count("|") == rule.count("|") == len(bench.MARKDOWN_COLUMNS) + 1
    assert len(table) == 2 and "| flux.1-dev (tiny) | 64 | 2 |" in table[1]
    assert "| — |" in table[0]  # no peak VRAM on the CPU


def test_flops_scale_with_the_batch(bench):
    """The FLOPs are counted on the real adapter's extraction: twice the images, twice the FLOPs."""

    def flops(batch: int) -> int:
        adapter = backbones.create("dit-xl-2-256", weights="random", config="tiny", compute_batch=batch)
        images = torch.rand(batch, 3, 64, 64)
        return bench.count_flops(lambda: adapter.extract(images, layers=[-1], timesteps=[500]))

    assert flops(2) == 2 * flops(1) > 0


def test_peak_table_and_layers(bench):
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989
    assert bench.peak_tflops("NVIDIA H100 PCIe", None) == 756
    assert bench.peak_tflops("NVIDIA H200", None) == 989
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312
    assert bench.peak_tflops("NVIDIA GeForce RTX 4090", None) is None
    assert bench.peak_tflops("NVIDIA GeForce RTX 4090", 165.0) == 165.0
    for n in (3, 28, 57):
        layers = bench.spread_layers(n)
        assert len(layers) == min(4, n) and layers[-1] == n - 1 and layers == sorted(set(layers))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_no_cuda_is_one_clear_error(bench):
    with pytest.raises(ProbebenchError, match="--tiny --device cpu"):
        bench.main(["--tiny"])
