"""`analogpipe reproduce`: end to end on a digits subset, computed verdicts, bad input, resume."""

from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path

import pytest

from analogpipe.cli import main
from analogpipe.experiments.paper import plan, quick_settings
from analogpipe.experiments.report import (
    NOT_SUPPORTED,
    RESULT_COLUMNS,
    SUPPORTED,
    Stat,
    analyse,
    claims,
    crossing,
    read_results,
    render,
    spearman,
)

TINY = ["--quick", "--subset", "320", "--epochs", "2", "--seeds", "1", "--workers", "1",
        "--taus", "0.4,0.8,1.6", "--stage-list", "1,2", "--convergence-steps", "60"]
SECTIONS = ("## What was run", "## Which of the paper's claims this run supports",
            "## 1. Test accuracy vs epoch", "## 2. Test accuracy vs clock cycles",
            "## 3. Cycles to a target accuracy and speedup vs M", "## 4. Saturation sweep over tau",
            "## 5. Convergence-rate check")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repro") / "out"
    assert main(["reproduce", *TINY, "--out", str(out)]) == 0
    return out


def test_tiny_reproduction_writes_csv_report_and_figures(tiny_run: Path) -> None:
    s = quick_settings(subset=320, epochs=2, seeds=1, taus=(0.4, 0.8, 1.6), stage_list=(1, 2))
    specs = plan(s)
    with open(tiny_run / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == RESULT_COLUMNS
        rows = list(reader)
    # one row per run and epoch: digital, WOP/SP/AP at M=4, SP/AP at M=1,2, WOP/AP at 2 more tau
    assert len(specs) == 1 + 3 + 4 + 4
    assert len(rows) == len(specs) * 2
    assert {r["run"] for r in rows} == {sp.name for sp in specs}
    assert {r["status"] for r in rows} == {"done"}
    lrs = {r["scheme"]: float(r["lr"]) for r in rows}
    assert lrs["ap"] == pytest.approx(0.1 / 4) and lrs["sp"] == lrs["wop"] == 0.1
    # the clock: t_f = t_b = 1/M, WOP costs 2 cycles per micro-batch whatever M
    wop = [r for r in rows if r["scheme"] == "wop" and r["tau"] == "0.8"]
    assert float(wop[0]["cycles"]) == pytest.approx(2 * float(wop[0]["samples"]) / 16)

    report = (tiny_run / "report.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    assert "n = 1" in report and "lr 0.025" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) >= 5
    for link in links:
        assert not link.startswith("/") and (tiny_run / link).is_file(), link
        assert (tiny_run / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = report.split("## Which of the paper's claims")[1].split("\n## ")[0]
    assert table.count("| **") >= 7
    for line in report.splitlines():  # every table row has its header's number of cells
        if line.startswith("| claim"):
            assert all(ln.count("|") == 5 for ln in table.splitlines() if ln.startswith("|"))
    assert not list(tiny_run.glob("**/.*.tmp*"))  # atomic writes left no temporary files


def test_rerun_skips_complete_runs_and_plots_need_only_the_csv(tiny_run: Path, capsys,
                                                               tmp_path: Path) -> None:
    from analogpipe.experiments import plots

    assert main(["reproduce", *TINY, "--out", str(tiny_run)]) == 0
    out = capsys.readouterr().err  # progress lines go to stderr
    assert out.count(" skipped ") == 12 and " done " not in out
    # a run cut short (no completion record) is resumed from its checkpoint, the rest skipped
    victim = next((tiny_run / "runs").glob("*-ap-M2-*"))
    (victim / "reproduce.json").unlink()
    assert main(["reproduce", *TINY, "--out", str(tiny_run)]) == 0
    out = capsys.readouterr().err
    name = victim.name.rsplit("-", 1)[0]  # the folder adds a hash of the run's settings
    assert out.count(" skipped ") == 11 and out.count(" done ") == 1 and name in out
    assert json.loads((victim / "reproduce.json").read_text())["epochs_done"] == 2
    # figures from results.csv alone, in a folder without any run
    s = quick_settings(subset=320, epochs=2, seeds=1, taus=(0.4, 0.8, 1.6), stage_list=(1, 2))
    figs = plots.make_figures(tiny_run / "results.csv", tmp_path, s)
    assert set(figs) == {"acc_epoch", "acc_cycles", "speedup", "tau"}
    assert all((tmp_path / f).is_file() for f in figs.values())


# ---------------------------------------------------------------------- verdicts from data
def _fabricated(ap_penalty: float, ap_slow: float = 1.0) -> list[dict]:
    """Rows of a 2-seed run set where AP's accuracy is `ap_penalty` below SP's."""
    s = quick_settings(seeds=2, epochs=4, taus=(0.2, 0.4, 0.8, 1.6))
    rows = []
    for spec in plan(s):
        c = spec.config
        for e in range(1, 5):
            base = {"digital": 0.95, "wop": 0.93, "sp": 0.93, "ap": 0.93 - ap_penalty}
            acc = base[c.scheme] * min(1.0, 0.4 + 0.2 * e)
            if c.scheme != "digital":
                acc -= 0.3 * max(0.0, 0.8 - c.tau)  # smaller tau: lower accuracy
            samples = 1408 * e
            mb = samples / 16
            M = c.stages
            if c.scheme in ("wop", "digital"):
                cycles = 2 * mb
            elif c.scheme == "sp":
                cycles = e * 22 * (4 + M - 1) * 2 / M
            else:
                cycles = e * (88 + M - 1) * 2 / M
            if c.scheme == "ap":
                samples = int(samples * ap_slow)
                cycles *= ap_slow
            rows.append({
                "run": spec.name, "experiments": ";".join(spec.experiments),
                "scheme": c.scheme, "model": c.model, "stages": M, "microbatches": 4,
                "micro_batch_size": 16, "lr": c.lr, "ap_lr_policy": "scaled",
                "tau": float("inf") if c.scheme == "digital" else c.tau, "seed": c.seed,
                "t_f": c.t_f, "t_b": c.t_b, "init": "he", "status": "done", "epoch": e,
                "samples": samples, "cycles": cycles, "updates": 0.0, "lr_epoch": c.lr,
                "test_acc": acc + 0.002 * c.seed, "test_loss": 0.1, "train_loss": 0.1,
                "train_acc": acc, "sat_max": 0.5 + 0.1 / c.tau, "sat_mean": 0.1 + 0.05 / c.tau,
            })
    return rows


def _verdicts(rows: list[dict]) -> dict[str, str]:
    s = quick_settings(seeds=2, epochs=4, taus=(0.2, 0.4, 0.8, 1.6))
    return {v["claim"]: v["verdict"] for v in claims(analyse(rows, s), s)}


def test_verdicts_follow_the_numbers() -> None:
    good = _verdicts(_fabricated(ap_penalty=0.0))
    assert good["AP (M=4) matches SP accuracy"] == SUPPORTED
    assert good["AP needs fewer cycles than SP and WOP (M=4)"] == SUPPORTED
    assert good["AP needs about as many samples as SP"] == SUPPORTED
    assert good["Near-linear speedup with M (AP)"] == SUPPORTED
    assert good["Asymptotic error grows as tau shrinks (AP)"] == SUPPORTED
    assert good["Smaller tau saturates the weights more, and accuracy falls with it"] == SUPPORTED

    bad = _verdicts(_fabricated(ap_penalty=0.2))  # AP clearly worse
    assert bad["AP (M=4) matches SP accuracy"] == NOT_SUPPORTED
    assert bad["AP (M=4) matches digital SGD accuracy"] == NOT_SUPPORTED
    slow = _verdicts(_fabricated(ap_penalty=0.0, ap_slow=5.0))  # AP needs 5x the samples
    assert slow["AP needs about as many samples as SP"] == NOT_SUPPORTED
    assert slow["AP needs fewer cycles than SP and WOP (M=4)"] == NOT_SUPPORTED
    assert slow["Near-linear speedup with M (AP)"] == NOT_SUPPORTED


def test_verdict_flips_in_the_rendered_report() -> None:
    s = quick_settings(seeds=2, epochs=4, taus=(0.2, 0.4, 0.8, 1.6))
    texts = []
    for penalty in (0.0, 0.2):
        a = analyse(_fabricated(penalty), s)
        texts.append(render(a, claims(a, s), s, {}))
    line = [next(ln for ln in t.splitlines() if ln.startswith("| AP (M=4) matches SP"))
            for t in texts]
    assert f"**{SUPPORTED}**" in line[0] and f"**{NOT_SUPPORTED}**" in line[1]


def test_tau_trend_reversed_is_not_supported() -> None:
    rows = _fabricated(0.0)
    for r in rows:  # larger tau now worse
        if r["scheme"] != "digital":
            r["test_acc"] = 0.9 - 0.2 * r["tau"]
    assert _verdicts(rows)["Asymptotic error grows as tau shrinks (WOP)"] == NOT_SUPPORTED


def test_helpers() -> None:
    curve = [{"epoch": 1, "samples": 100, "cycles": 50, "test_acc": 0.5},
             {"epoch": 2, "samples": 200, "cycles": 100, "test_acc": 0.9}]
    assert crossing(curve, 0.7, 0.1) == pytest.approx((150, 75))
    assert crossing(curve, 0.3, 0.1) == pytest.approx((50, 25))  # from chance at 0 samples
    assert all(v != v for v in crossing(curve, 0.95, 0.1))  # NaN: never reached
    st = Stat.of([1.0, 3.0, float("nan")])
    assert (st.mean, st.n, st.total, st.lo, st.hi) == (2.0, 2, 3, 1.0, 3.0)
    assert "2/3 reached" in st.fmt()
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_results_csv_round_trip(tmp_path: Path) -> None:
    from analogpipe.experiments.report import csv_text

    rows = _fabricated(0.0)[:5]
    (tmp_path / "r.csv").write_text(csv_text(rows))
    back = read_results(tmp_path / "r.csv")
    assert len(back) == 5
    assert back[0]["tau"] == rows[0]["tau"] and back[0]["stages"] == rows[0]["stages"]
    assert back[0]["test_acc"] == rows[0]["test_acc"]


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "seeds"),
    (["--workers", "0"], "workers"),
    (["--epochs", "0"], "epochs"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "cifar"),
    (["--device", "cuda", "--workers", "1"], None),
])
def test_bad_input_exits_2_before_writing(tmp_path: Path, capsys, args, message) -> None:
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = tmp_path / "never"
    assert main(["reproduce", "--quick", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error" in err
    if message:
        assert message in err.lower()
    assert not out.exists()


def test_unknown_dataset_exits_2(tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--quick", "--dataset", "mnist", "--out", str(out)])
    assert exc.value.code == 2 and not out.exists()


def test_full_mode_is_expressible() -> None:
    from analogpipe.experiments.paper import full_settings

    s = full_settings(data_dir="/data/cifar")
    assert (s.dataset, s.model, s.epochs, s.lr, s.lr_milestones) == (
        "cifar10", "resnet10", 300, 0.1, (100, 200))
    assert s.microbatches * s.micro_batch_size == 128 and s.tau == 0.8
    specs = plan(s)
    assert {sp.config.model for sp in specs if "speedup" in sp.experiments} == {"resnet18"}
    assert max(sp.config.stages for sp in specs) == 8
    assert copy.deepcopy(s.to_dict())["stage_list"] == [1, 2, 4, 8]
    json.dumps(s.to_dict())
