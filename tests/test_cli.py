from __future__ import annotations

import subprocess
import sys

import pytest

from probebench.cli import build_parser, main

SUBCOMMANDS = ["list", "extract", "fit", "analyze", "run", "scenes", "sweep", "check-backbone"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "probebench.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_console_script_help():
    out = run_cli("--help")
    assert out.returncode == 0
    for sub in SUBCOMMANDS:
        assert sub in out.stdout


@pytest.mark.parametrize("sub", [*SUBCOMMANDS, "scenes export"])
def test_every_subcommand_has_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([*sub.split(), "--help"])
    assert e.value.code == 0
    assert "usage: probebench " + sub in capsys.readouterr().out


def test_unknown_subcommand_is_one_line_with_choices():
    out = run_cli("extrakt")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "extrakt" in lines[0] and "extract" in lines[0] and "choose from" in lines[0]
    assert "Traceback" not in out.stderr


def test_unknown_option_is_one_line():
    out = run_cli("extract", "--backbone", "timm:efficientnet_lite0", "--layerz", "0")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--layerz" in lines[0] and "--layers" in lines[0]


def test_unknown_backbone_task_and_config_key_are_one_line(tmp_path, capsys):
    assert main(["extract", "--backbone", "dinov9", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Unknown backbone 'dinov9'" in err[0]
    assert (
        main(
            [
                "extract",
                "--backbone",
                "timm:efficientnet_lite0",
                "--dataset",
                "scene",
                "--cache",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Did you mean: scenes" in err[0]
    assert main(["run", "dataa.max_train=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'dataa'" in err[0] and "'data'" in err[0]
    assert (
        main(["run", "probes.0.params.lambda=[1]", f"extract.cache_dir={tmp_path}", f"output_dir={tmp_path}"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "Unknown parameter 'lambda' for probe 'ridge'" in err[0] and "'lambdas'" in err[0]
    )


def test_debug_shows_the_traceback(capsys):
    assert main(["--debug", "run", "dataa.max_train=1"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_layer_out_of_range_names_the_valid_range(tmp_path, capsys):
    code = main(
        [
            "extract",
            "--backbone",
            "timm:efficientnet_lite0",
            "--layers",
            "9",
            "--max-images",
            "2",
            "--resolution",
            "16",
            "--image-size",
            "32",
            "--cache",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "valid indices are 0..4" in capsys.readouterr().err


def test_timesteps_refused_for_a_non_diffusion_backbone(tmp_path, capsys):
    code = main(
        [
            "extract",
            "--backbone",
            "timm:efficientnet_lite0",
            "--timesteps",
            "100",
            "--max-images",
            "2",
            "--resolution",
            "16",
            "--image-size",
            "32",
            "--cache",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "not a diffusion model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "what,expect", [("backbones", "timm:<name>"), ("tasks", "scenes"), ("probes", "ridge")]
)
def test_list_prints_a_table(what, expect, capsys):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["NAME", "KIND", "SOURCE", "NOTES"]
    assert any(line.startswith(expect) for line in out[1:])


def test_parser_lists_the_public_subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(SUBCOMMANDS) <= set(sub.choices)
