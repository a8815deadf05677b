"""Generation with labels (``probebench export-bundle`` + ``probebench generate``): a small tiny-mmdit run's fusion
heads as a bundle, samples decoded in the same pass and written as a ``folder`` dataset that probebench reads
back; identical bytes for any batch size, world size or resume; one clear error per bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import backbones
from probebench.bundles import export_bundle
from probebench.cli import main
from probebench.core.errors import ProbebenchError
from probebench.generate import STATE_DIR, GenerateConfig, generate, sample_id
from probes.bundle import decode_heads, load_bundle

pytestmark = pytest.mark.usefixtures("one_thread")

N = 4
STEPS = 6


@pytest.fixture(scope="module")
def trained(generation_run):
    return generation_run


@pytest.fixture(scope="module")
def tiny():
    return backbones.create("tiny-mmdit", dtype="float32")


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def gen_cfg(bundle: Path, out: Path, **kw) -> GenerateConfig:
    base = {
        "num_samples": N,
        "prompts": ["sphere floor", ""],
        "steps": STEPS,
        "batch_size": 2,
        "contact_rows": 2,
    }
    return GenerateConfig(bundle=str(bundle), out=str(out), **{**base, **kw})


def test_the_bundle_records_its_heads_generator_and_choice_on_val(trained):
    out, bundle_dir, _ = trained
    b = load_bundle(bundle_dir)
    assert b.tasks == ["segmentation", "saliency", "depth"]  # the run's order (the contact sheet's columns)
    assert b.generator["backbone"] == "tiny-mmdit" and b.generator["adapter"]["weights"].startswith(
        "file:sha256:"
    )
    assert b.generator["adapter"]["conditioning"]["text_source"] == "empty-caption"
    from probebench.core.results import read_results

    rows = read_results(out)
    for task, head in b.heads.items():
        assert head.variant == "fusion-spatial" and len(head.keys) == 3  # every timestep of the best layer
        kind = head.target_spec.target_kind
        val = rows[(rows.probe == "fusion-spatial") & (rows.task == task) & (rows.split == "val")]
        val = val[val.metric == kind.main_metric]
        best = val.value.max() if kind.higher_is_better else val.value.min()
        assert head.val[kind.main_metric] == pytest.approx(best)  # the seed chosen on val
    # a changed head file is refused
    copy = trained[2] / "bundle-copy"
    shutil.copytree(bundle_dir, copy)
    f = copy / "heads" / "depth.safetensors"
    f.write_bytes(f.read_bytes()[:-1] + b" ")
    with pytest.raises(ProbebenchError, match="does not match its recorded sha256"):
        load_bundle(copy)


def test_heads_decode_sampled_features_as_they_decode_cached_ones(trained, tiny):
    """The heads applied to features captured during sampling give what they give on the extraction of the
    same latent (same pooling, float16 rounding and resampling path as training)."""
    _, bundle_dir, _ = trained
    b = load_bundle(bundle_dir)
    nets = b.load_heads()
    x = torch.rand(2, 3, 64, 64)
    feats = tiny.extract(x, b.layers(), b.timesteps(), seed=0)
    ours = decode_heads(b, nets, feats, (64, 64))
    for task, head in b.heads.items():
        xs = [feats[k].half().float() for k in head.keys]
        spec = head.target_spec
        obj = spec.target_kind.objective(spec, head.spec["objective"], None)
        with torch.no_grad():
            raw = nets[task](xs)
        up = torch.nn.functional.interpolate(
            obj.prepare(raw), size=(64, 64), mode="bilinear", align_corners=False
        )
        assert np.array_equal(ours[task], obj.decode(up).numpy()), task


def test_generate_writes_a_folder_dataset_that_probebench_reads_back(trained, tmp_path):
    _, bundle_dir, _ = trained
    out = generate(gen_cfg(bundle_dir, tmp_path / "g"), progress=False)
    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    src = meta["source"]
    assert src["bundle_sha256"] == load_bundle(bundle_dir).hash and src["steps"] == STEPS
    assert src["prompts"] == ["sphere floor", ""] and src["seed"] == 0 and src["guidance"] == 1.0
    assert set(src["capture_steps"].values()) == {0.35, 0.7} and src["clean_forward"]
    assert src["weights_id"].startswith("file:sha256:")
    assert (out / "contact_sheet.png").is_file()
    import tasks

    ds = tasks.create("folder", split="train", root=str(out))
    assert len(ds) == N and set(ds.targets) == {"segmentation", "saliency", "depth"}
    seg = ds.load_target(0, "segmentation")
    assert seg.shape == (64, 64) and seg.max() < len(ds.target_spec("segmentation").class_names)
    assert ds.load_image(1).shape[-1] == 3
    done = json.loads((out / STATE_DIR / "done" / f"{sample_id(0)}.json").read_text())
    # 6 steps of linspace(1, 0, 7) + σ = 0.7 and 0.35 inserted, + the σ = 0 forward
    assert done["forwards"] == {"sampler": STEPS + 2, "clean": 1}


def test_output_is_identical_for_any_batch_size_world_size_and_resume(trained, tmp_path):
    _, bundle_dir, _ = trained
    ref = tree_digest(generate(gen_cfg(bundle_dir, tmp_path / "ref"), progress=False))
    # two ranks, one after the other (what torchrun's processes do side by side); rank 0 finishes last
    import os

    for rank in (1, 0):
        os.environ.update(RANK=str(rank), WORLD_SIZE="2")
        try:
            generate(gen_cfg(bundle_dir, tmp_path / "w2"), progress=False)
        finally:
            del os.environ["RANK"], os.environ["WORLD_SIZE"]
        assert (tmp_path / "w2" / "dataset.yaml").is_file() == (rank == 0)
    assert tree_digest(tmp_path / "w2") == ref
    # resume: a killed run left sample 2 without its marker and a truncated image; only it is redone
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "ref", resumed)
    (resumed / "dataset.yaml").unlink()
    (resumed / STATE_DIR / "done" / f"{sample_id(2)}.json").unlink()
    img = resumed / "train" / "images" / f"{sample_id(2)}.png"
    img.write_bytes(img.read_bytes()[:50])
    before = {p: p.stat().st_mtime_ns for p in (resumed / "train" / "images").iterdir()}
    generate(gen_cfg(bundle_dir, resumed), progress=False)
    assert tree_digest(resumed) == ref
    changed = [p.name for p in before if p.stat().st_mtime_ns != before[p]]
    assert changed == [f"{sample_id(2)}.png"]


def test_bad_input_gets_one_clear_error(trained, tmp_path):
    _, bundle_dir, tmp = trained
    with pytest.raises(ProbebenchError, match=r"no head for 'normals'; it has: "):
        generate(gen_cfg(bundle_dir, tmp_path / "a", tasks=["normals"]), progress=False)
    with pytest.raises(ProbebenchError, match=r"not in its vocabulary \[.*'sphere'"):
        generate(gen_cfg(bundle_dir, tmp_path / "b", prompts=["unicorn"]), progress=False)
    # another generator than the bundle's: both sides named
    other = backbones.create("tiny-mmdit", weights="random", dtype="float32")
    with pytest.raises(
        ProbebenchError, match=r"weights: bundle \"file:sha256:.*\" vs generator \"random:seed0"
    ):
        generate(gen_cfg(bundle_dir, tmp_path / "c"), adapter=other, progress=False)
    captioned = backbones.create("tiny-mmdit", dtype="float32", caption=["floor"])
    with pytest.raises(
        ProbebenchError, match=r"conditioning: bundle .*empty-caption.* vs generator .*caption:floor"
    ):
        generate(gen_cfg(bundle_dir, tmp_path / "d"), adapter=captioned, progress=False)
    # a rerun into a folder of another generation
    generate(gen_cfg(bundle_dir, tmp_path / "e", num_samples=1), progress=False)
    with pytest.raises(ProbebenchError, match=r"holds samples of another generation \(different seed\)"):
        generate(gen_cfg(bundle_dir, tmp_path / "e", num_samples=1, seed=3), progress=False)
    with pytest.raises(ProbebenchError, match=r"\(different batch_size\)"):  # the batch changes last bits
        generate(gen_cfg(bundle_dir, tmp_path / "e", num_samples=1, batch_size=1), progress=False)
    with pytest.raises(ProbebenchError, match=r"no saved 'fusion-global' heads"):
        export_bundle(trained[0], tmp / "nope", variant="fusion-global")


def test_cli_export_and_generate(trained, tmp_path, capsys):
    out, _, _ = trained
    assert main(["export-bundle", str(out), "--out", str(tmp_path / "b"), "--variant", "fusion-single"]) == 0
    b = load_bundle(tmp_path / "b")
    assert all(len(h.keys) == 1 for h in b.heads.values())  # the best single timestep per task
    code = main(
        [
            "generate",
            str(tmp_path / "b"),
            "--out",
            str(tmp_path / "g"),
            "-n",
            "2",
            "--steps",
            "4",
            "--prompt",
            "box floor",
            "--tasks",
            "segmentation",
            "--no-progress",
        ]
    )
    assert code == 0 and (tmp_path / "g" / "dataset.yaml").is_file()
    assert main(["generate", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist: a generation bundle is a folder" in capsys.readouterr().err


def test_guidance_reads_the_conditional_half_and_records_its_negative(trained, tmp_path, tiny):
    """With classifier-free guidance the pipeline's batch is [negative; conditional]; the heads read the
    conditional half, so a guided sample's features are those of its own prompt at the latent it is at."""
    from backbones.diffusion.sampling import plan_sigmas, sample_with_features

    _, bundle_dir, _ = trained
    plan = plan_sigmas(tiny.sampling_sigmas(4), [0.35])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond, neg = tiny.encode_text("sphere floor"), tiny.encode_text("background floor")
    seen = {}

    def keep(module, args, kwargs):
        if float(kwargs["timestep"].reshape(-1)[0]) == float(torch.tensor(0.35) * 1000):
            seen["z"] = kwargs["hidden_states"][1:].clone()  # the conditional half's latent

    h = tiny.transformer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        traj = sample_with_features(tiny, x, plan, [2], conditioning=[cond], guidance=3.0, negative=neg)
    finally:
        h.remove()
    with tiny.batch_conditioning([cond]):
        ref = tiny.forward_features(seen["z"], tiny.model_timesteps([0.35], 1), [2])
    # the guided forward holds 2 rows, the reference 1: equal up to a matrix product's last bits
    torch.testing.assert_close(traj.features[(2, 0.35)], ref[2], rtol=1e-4, atol=1e-4)
    with tiny.batch_conditioning([neg]):  # the negative's features differ: the half read is the right one
        other = tiny.forward_features(seen["z"], tiny.model_timesteps([0.35], 1), [2])
    assert not torch.allclose(traj.features[(2, 0.35)], other[2], atol=1e-2)
    assert traj.forwards["sampler"] == len(plan.sigmas)  # one batched forward of 2 per step
    out = generate(
        gen_cfg(bundle_dir, tmp_path / "g", num_samples=2, guidance=3.0, negative_prompt="background floor"),
        progress=False,
    )
    src = yaml.safe_load((out / "dataset.yaml").read_text())["source"]
    assert src["guidance"] == 3.0 and src["negative_prompt"] == "background floor"
    assert src["forwards_per_sample"] == 2 * len(src["sigmas"]) + 1


def test_the_cpu_thread_count_is_part_of_what_makes_the_bytes(trained, tmp_path):
    """A reduction splits across threads, so 1 and 2 threads give different last bits: the count is recorded,
    and a rerun into the folder with another is refused rather than mixing samples."""
    _, bundle_dir, _ = trained
    out = generate(gen_cfg(bundle_dir, tmp_path / "t", num_samples=1, threads=1), progress=False)
    src = yaml.safe_load((out / "dataset.yaml").read_text())["source"]
    assert src["compute"] == {"device_type": "cpu", "cpu_threads": 1}
    with pytest.raises(ProbebenchError, match=r"different compute\) \(on a CPU the thread count .*--threads"):
        generate(gen_cfg(bundle_dir, tmp_path / "t", num_samples=1, threads=2), progress=False)


def test_export_labels_a_multi_layer_heads_cell_as_result_rows_do():
    """A head over two layers × three timesteps is the rows' cell ``2+4`` / ``0+0.35+0.7`` (distinct values in
    input order), not one label per input."""
    import pandas as pd

    from probebench.bundles import _val_scores

    inputs = [{"layer": la, "timestep": t} for la in (2, 4) for t in (0.0, 0.35, 0.7)]
    head = {
        "meta": {"name": "fusion-spatial/depth/x"},
        "spec": {"inputs": inputs},
        "task": "depth",
        "model": "tiny-mmdit-default",
        "seed": 1,
    }
    row = {
        "probe": "fusion-spatial",
        "task": "depth",
        "split": "val",
        "layer": "2+4",
        "timestep": "0+0.35+0.7",
        "backbone": "tiny-mmdit",
        "weights": "default",
        "metric": "rmse",
    }
    rows = pd.DataFrame(
        [
            {**row, "seed": 0, "value": 1.5},
            {**row, "seed": 1, "value": 1.2},
            {**row, "seed": 1, "layer": "2", "value": 9.0},
        ]
    )
    assert _val_scores(rows, head) == {"rmse": 1.2}
    assert _val_scores(rows, {**head, "model": "other-default"}) == {}
