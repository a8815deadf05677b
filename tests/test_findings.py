"""The report's findings (a)–(d) and the ridge-vs-linear ranking, on hand-made result tables."""

from __future__ import annotations

import pandas as pd

from analysis.findings import fusion_findings, random_twin_findings, ranking_findings, timestep_findings

ROLES = {"fusion-noise-control": "noise-control"}  # what a run's config.yaml declares (RunDir.stage_roles)


def rows(model, weights, probe, task, metric, cells, split_values):
    out = []
    for (layer, t), vals in zip(cells, split_values):
        for split, v in zip(("val", "test"), vals):
            out.append(
                {
                    "backbone": model,
                    "weights": weights,
                    "probe": probe,
                    "task": task,
                    "metric": metric,
                    "layer": str(layer),
                    "timestep": t,
                    "split": split,
                    "value": v,
                    "seed": 0,
                    "dataset": "scenes",
                    "higher_is_better": metric != "rmse",
                    "run": "r",
                    "log_snr": float("nan"),
                }
            )
    return out


def test_timestep_findings_report_best_t_per_task_and_spread():
    cells = [(1, "0"), (1, "0.5"), (1, "0.9"), (0, "0.5")]
    df = pd.DataFrame(
        rows(
            "m",
            "default",
            "ridge",
            "segmentation",
            "mIoU",
            cells,
            [(0.5, 0.52), (0.6, 0.61), (0.2, 0.25), (0.1, 0.1)],
        )
        + rows(
            "m", "default", "ridge", "depth", "rmse", cells, [(1.0, 1.1), (2.0, 2.0), (3.0, 3.0), (4.0, 4.0)]
        )
    )
    (line,) = timestep_findings(df)
    assert "segmentation t=0.5" in line and "depth t=0" in line and "differs between tasks" in line
    assert "mIoU 0.250–0.610 over t at layer 1 (spread 0.360" in line


def test_fusion_and_random_twin_and_ranking():
    df = pd.DataFrame(
        rows("m", "default", "fusion-spatial", "segmentation", "mIoU", [(1, "0+0.5")], [(0.7, 0.68)])
        + rows("m", "default", "fusion-single", "segmentation", "mIoU", [(1, "0.5")], [(0.6, 0.6)])
        + rows("m", "default", "fusion-noise-control", "segmentation", "mIoU", [(1, "0.5")], [(0.65, 0.7)])
        + rows("m", "random", "ridge", "segmentation", "mIoU", [(1, "0.5")], [(0.3, 0.3)])
    )
    (f,) = fusion_findings(df, roles=ROLES)
    assert "fusion-spatial mIoU 0.680 beats (1 fit) fusion-single 0.600 (gain +0.080)" in f
    assert "loses to (1 fit) fusion-noise-control 0.700 (gain -0.020)" in f
    assert "clean-image cell" not in f  # a noisy control cell carries noise diversity
    clean = df.assign(log_snr=df["log_snr"].mask(df["probe"] == "fusion-noise-control", float("inf")))
    (f,) = fusion_findings(clean, roles=ROLES)
    assert "clean-image cell (log-SNR +∞)" in f and "controls only for the fusion's width" in f
    (d,) = random_twin_findings(df)
    assert d.endswith(
        "m (default): mIoU 0.680 (fusion-spatial) beats (1 fit) its random twin 0.300 (ridge; gain +0.380)."
    )
    control, again = random_twin_findings(df, notes={"m (random)": "random init N(0, 0.02); VAE: trained"})
    assert control == "- (d) The control, m (random): random init N(0, 0.02); VAE: trained." and again == d
    cells = [(i, "none") for i in range(4)]
    rank = pd.DataFrame(
        rows("e", "default", "ridge", "depth", "rmse", cells, [(1, 1), (2, 2), (3, 3), (4, 4)])
        + rows("e", "default", "linear", "depth", "rmse", cells, [(0.5, 1), (0.6, 2), (0.9, 3), (0.8, 4)])
    )
    (r,) = ranking_findings(rank)
    assert "over 4 cells" in r and f"ρ = {0.8:.3f}" in r


def test_gain_over_the_random_twin_by_timestep():
    from analysis.findings import twin_gain_by_timestep_findings

    cells = [(0, "0"), (1, "0"), (0, "0.5"), (1, "0.5")]
    # trained: layer 1 is best on val at both t; random: layer 0. Raw peak at t=0, gain peak at t=0.5.
    df = pd.DataFrame(
        rows(
            "m",
            "default",
            "ridge",
            "segmentation",
            "mIoU",
            cells,
            [(0.1, 0.1), (0.8, 0.7), (0.1, 0.1), (0.6, 0.65)],
        )
        + rows(
            "m",
            "random",
            "ridge",
            "segmentation",
            "mIoU",
            cells,
            [(0.5, 0.6), (0.2, 0.9), (0.3, 0.3), (0.1, 0.9)],
        )
    )
    (line,) = twin_gain_by_timestep_findings(df)
    assert "t=0 +0.100, t=0.5 +0.350 — the gain is largest at t=0.5 (the largest of these test gains)" in line
    # the best timestep is (a)'s val-chosen one (layer 1, t=0 on val), not the test curve's peak
    assert line.endswith("its best timestep (chosen on val, as in (a)) is t=0.")
    assert "peaks" not in line
    assert twin_gain_by_timestep_findings(df[df["weights"] != "random"]) == []


def test_findings_over_probe_seeds_give_mean_std_and_flag_gains_within_the_std():
    """Three probe seeds: the findings report mean ± std (ddof 1) and say when a gain is below the larger std."""

    def seeded(probe, cell, vals):
        return [
            {**r, "seed": s}
            for s, v in enumerate(vals)
            for r in rows("m", "default", probe, "segmentation", "mIoU", [cell], [(v, v)])
        ]

    df = pd.DataFrame(
        seeded("fusion-spatial", (1, "0+0.5"), [0.60, 0.62, 0.64])
        + seeded("fusion-single", (1, "0.5"), [0.55, 0.60, 0.65])
        + seeded("fusion-noise-control", (1, "0.5"), [0.50, 0.50, 0.50])
    )
    (f,) = fusion_findings(df, roles=ROLES)
    assert "fusion-spatial mIoU 0.620 ± 0.020 (3 probe seeds)" in f
    assert "is within noise of fusion-single 0.600 ± 0.050 (gain +0.020)" in f
    assert "beats fusion-noise-control 0.500 ± 0.000 (gain +0.120)" in f


def test_verdicts_use_three_words_against_the_larger_seed_std():
    from analysis.compare import VERDICT_RULE, VERDICTS, verdict

    assert VERDICTS == ("beats", "within noise", "loses")
    assert verdict(0.05, 0.02, 0.01) == "beats"
    assert verdict(-0.05, 0.02, float("nan")) == "loses"
    assert verdict(0.015, 0.01, 0.02) == "within noise"  # the larger std is the noise
    assert verdict(-0.015, 0.02, 0.01) == "within noise"
    assert verdict(0.01) == "beats (1 fit)" and verdict(-0.01) == "loses (1 fit)"
    assert verdict(0.0) == "within noise (1 fit)"
    from analysis.compare import verdict_phrase

    assert [verdict_phrase(w) for w in ("beats", "loses (1 fit)", "within noise")] == [
        "beats",
        "loses to (1 fit)",
        "is within noise of",
    ]
    assert all(w in VERDICT_RULE for w in VERDICTS)


def test_one_best_timestep_per_task_chosen_on_val_in_every_finding():
    """(a) and the per-timestep (d) name the val-chosen timestep even where the test curve peaks elsewhere."""
    from analysis.findings import best_timesteps, twin_gain_by_timestep_findings

    cells = [(1, "0"), (1, "0.1"), (1, "0.2")]
    vals = [(0.50, 0.40), (0.60, 0.41), (0.55, 0.70)]  # val picks t=0.1; test peaks at t=0.2
    df = pd.DataFrame(
        rows("m", "default", "ridge", "segmentation", "mIoU", cells, vals)
        + rows("m", "random", "ridge", "segmentation", "mIoU", cells, [(0.2, 0.2)] * 3)
    )
    bt = best_timesteps(df)
    trained = bt[bt["model"] == "m (default)"].iloc[0]
    assert (trained["layer"], trained["timestep"], trained["test_value"]) == ("1", "0.1", 0.41)
    (a, _) = timestep_findings(df)
    assert "segmentation t=0.1 (layer 1, test 0.410)" in a and "t=0.2" not in a.split("Test curves")[0]
    (d,) = twin_gain_by_timestep_findings(df)
    assert d.endswith("is t=0.1.")


def test_the_noise_control_is_found_by_its_role_not_its_label():
    spatial = rows("m", "default", "fusion-spatial", "segmentation", "mIoU", [(1, "0+0.5")], [(0.7, 0.68)])
    control = rows("m", "default", "draws-at-one-t", "segmentation", "mIoU", [(1, "0.5")], [(0.65, 0.6)])
    lookalike = rows("m", "default", "x-noise-control", "segmentation", "mIoU", [(1, "0.5")], [(0.6, 0.5)])
    df = pd.DataFrame(spatial + control + lookalike)
    (f,) = fusion_findings(df, roles={"draws-at-one-t": "noise-control"})
    assert "beats (1 fit) draws-at-one-t 0.600 (gain +0.080)" in f
    assert "x-noise-control" not in f  # a label is not a role
    assert fusion_findings(df) == []  # no role declared: no control, and no baseline to compare with
