"""A command line that explains itself: help, version, suggestions, --config, schedule text,
generated docs, packaging, and the --processes bit-for-bit claim at equal --threads."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from analogpipe.cli import HelpFormatter, build_parser

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--subset", "192", "--micro-batch-size", "16", "--microbatches", "2", "--model", "mlp",
        "--width", "32", "--no-progress"]


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analogpipe.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser([])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_flag_has_help_with_its_default_and_choices_are_listed():
    fmt = HelpFormatter("analogpipe")
    subs = _subparsers()
    assert set(subs) == {"run", "train", "schedule", "reproduce", "plot", "bench"}
    for name, parser in subs.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{name} {action.option_strings or action.dest}"
            text = fmt._get_help_string(action)
            assert text and text != argparse.SUPPRESS, f"{where}: no help"
            if action.option_strings and not action.required:
                assert "default" in text, f"{where}: help does not give the default"
        usage = parser.format_help()
        for action in parser._actions:
            if action.choices and not isinstance(action, argparse._SubParsersAction):
                assert "{" + ",".join(map(str, action.choices)) + "}" in usage, action.dest


def test_version_help_examples_and_suggestions():
    from analogpipe import __version__

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"analogpipe {__version__}"
    r = cli("train", "--help")
    assert r.returncode == 0
    tail = r.stdout.rstrip().splitlines()[-4:]
    assert tail[0].lstrip().startswith("#") and tail[2].lstrip().startswith("#")
    assert tail[1].strip().startswith("analogpipe train ")
    assert tail[3].strip().startswith("analogpipe train --config ")
    r = cli("train", "--out", "x", "--epohcs", "3")
    assert r.returncode == 2 and "did you mean --epochs?" in r.stderr
    r = cli("trian")
    assert r.returncode == 2 and "did you mean train?" in r.stderr
    r = cli("schedule", "--scheme", "spp")
    assert r.returncode == 2 and "did you mean sp?" in r.stderr


def test_config_repeats_a_run_and_flags_override_it(tmp_path):
    first = tmp_path / "first"
    r = cli("train", *TINY, "--scheme", "sp", "--stages", "2", "--tau", "0.6", "--epochs", "1",
            "--out", str(first))
    assert r.returncode == 0, r.stderr
    again = tmp_path / "again"
    r = cli("train", "--config", str(first / "run.json"), "--no-progress", "--out", str(again))
    assert r.returncode == 0, r.stderr
    a = torch.load(first / "checkpoint.pt", weights_only=False)
    b = torch.load(again / "checkpoint.pt", weights_only=False)
    assert a["config"] == b["config"]
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items()
               if isinstance(v, torch.Tensor))
    # a TOML file, with a flag beside it that wins
    toml = tmp_path / "run.toml"
    toml.write_text('subset = 192\nmicro-batch-size = 16\nmicrobatches = 2\nwidth = 32\n'
                    'scheme = "ap"\nstages = 2\ntau = 0.6\nepochs = 1\nt_f = 0.5\n')
    varied = tmp_path / "varied"
    r = cli("train", "--config", str(toml), "--tau", "0.3", "--no-progress", "--out",
            str(varied))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((varied / "run.json").read_text())["config"]
    assert (cfg["scheme"], cfg["stages"], cfg["tau"], cfg["t_f"]) == ("ap", 2, 0.3, 0.5)
    bad = tmp_path / "bad.toml"
    bad.write_text("tua = 0.3\n")
    r = cli("train", "--config", str(bad), "--out", str(tmp_path / "never"))
    assert r.returncode == 2 and str(bad) in r.stderr and "tua" in r.stderr
    assert not (tmp_path / "never").exists()


def test_schedule_text_fits_100_columns_with_legend_and_full():
    r = cli("schedule", "--scheme", "ap", "--stages", "8", "--microbatches", "16", "--steps",
            "4", "--lowered")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(x) for x in lines) <= 100
    assert "legend:" in r.stdout and "SFk" in r.stdout and "+Uk" in r.stdout
    assert "omitted (--full" in r.stdout
    full = cli("schedule", "--scheme", "ap", "--stages", "8", "--microbatches", "16", "--steps",
               "4", "--lowered", "--full")
    assert max(len(x) for x in full.stdout.splitlines()) <= 100
    makespan = next(int(x.split()[1]) for x in full.stdout.splitlines()
                    if x.startswith("makespan"))
    slots = {int(t) for x in full.stdout.splitlines() if x.startswith(" ")
             for t in x.split() if t.isdigit()}
    assert slots == set(range(makespan))  # every slot of the grid is printed once
    assert "omitted" not in full.stdout and "more actions" not in full.stdout


def test_docs_cli_md_is_generated_from_the_current_parser():
    from analogpipe.clidocs import render

    assert (ROOT / "docs" / "cli.md").read_text() == render(), \
        "docs/cli.md is stale: python -m analogpipe.clidocs > docs/cli.md"


def test_readme_stands_alone_and_license_is_spdx():
    readme = (ROOT / "README.md").read_text()
    assert "shared/" not in readme
    for needle in (".venv/bin/activate", ".venv/bin/analogpipe", "download.pytorch.org",
                   "docs/cli.md", "tar -xzf"):
        assert needle in readme, needle
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


@pytest.mark.slow
def test_processes_equal_one_process_bit_for_bit_at_equal_threads(tmp_path):
    common = [*TINY, "--scheme", "ap", "--stages", "2", "--epochs", "1", "--threads", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli("train", *common, "--out", str(one)).returncode == 0
    r = cli("train", *common, "--processes", "2", "--out", str(two))
    assert r.returncode == 0, r.stderr
    a = torch.load(one / "checkpoint.pt", weights_only=False)
    b = torch.load(two / "checkpoint.pt", weights_only=False)
    for k, v in a["model"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b["model"][k]), k
