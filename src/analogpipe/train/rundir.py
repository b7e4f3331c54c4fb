"""Run folders a user cannot lose: checks made before anything is written.

- `check_out_dir`: the output folder is usable (not a file, not under a file, writable) and,
  unless the run resumes or `overwrite` is given, holds no earlier run;
- `load_checkpoint`: a checkpoint that is missing, truncated or corrupt is a ConfigError
  naming the file;
- `resume_problems`: which settings of a resumed run differ from the checkpoint's in a way
  that would change what already ran. Only the horizon may grow: a larger `epochs` (and the
  lr milestones that come with it) is accepted as long as the lr of every epoch already
  trained stays the same, so the resumed run equals an uninterrupted run to the new horizon.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from analogpipe.errors import ConfigError

RUN_FILES = ("run.json", "metrics.jsonl", "checkpoint.pt")
CHECKPOINT_KEYS = ("model", "optimizers", "versions", "epoch", "metrics", "config")

# TrainConfig field -> the `analogpipe train` flag that sets it (for messages)
_FLAG_NAMES = {"partition_metric": "--partition"}


def flag_name(field: str) -> str:
    """The command-line flag of a TrainConfig field (`micro_batch_size` -> --micro-batch-size)."""
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path: str | Path, flag: str = "--out") -> None:
    """`path` is, or can be created as, a writable folder; ConfigError naming it otherwise."""
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty: give a folder path (an empty path would write "
                          "into the current folder)")
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, not a folder; give a folder path")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise ConfigError(f"{flag} {path}: {base} is a file, so no folder can be created "
                          "under it; give a folder path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: folder {base} is not writable; choose a folder "
                          "you can write to")


def check_out_dir(out: str | Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Checks on a run's output folder, before anything is written (ConfigError on failure).

    Without `resume` or `overwrite`, a folder that already holds files is refused: an earlier
    run is never replaced by accident.
    """
    check_writable_dir(out)
    p = Path(out)
    if resume or overwrite or not p.is_dir():
        return
    entries = sorted(e.name for e in p.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(
            f"--out {out}: folder already holds a run or other files ({shown}); continue it "
            "with --resume, replace it with --overwrite, or choose another --out")


def clear_run_files(out: str | Path) -> None:
    """`--overwrite`: remove the previous run's files (only those; other files stay)."""
    for name in RUN_FILES:
        f = Path(out) / name
        if f.is_file():
            f.unlink()


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict; ConfigError naming the file if it is missing or unreadable."""
    import torch

    p = Path(path)
    if not p.is_file():
        if (p.parent / "run.json").is_file():  # started, but stopped before its first epoch
            raise ConfigError(f"--resume: no checkpoint at {p}: the run in {p.parent} finished "
                              "no epoch; start it again with --overwrite instead of --resume")
        raise ConfigError(f"--resume: no checkpoint at {p}; start without --resume, or give "
                          "the --out of the run to continue")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, ...
        raise ConfigError(f"--resume: checkpoint {p} is truncated or corrupt "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                          "start a new run with another --out (or --overwrite)") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise ConfigError(f"--resume: {p} is not an analogpipe checkpoint (expected the keys "
                          f"{', '.join(CHECKPOINT_KEYS)}); start a new run with another --out")
    return ckpt


def _lr_schedule(cfg: dict[str, Any], epochs: int) -> list[float]:
    lr, gamma, ms = cfg["lr"], cfg["lr_gamma"], cfg["lr_milestones"]
    return [lr * gamma ** sum(1 for m in ms if e >= m) for e in range(epochs)]


def resume_problems(saved: dict[str, Any], new: dict[str, Any], done: int) -> list[str]:
    """Why a run with settings `new` cannot continue a checkpoint with settings `saved` after
    `done` epochs ([] when it can). Settings other than epochs / lr_milestones must match;
    epochs may grow; milestones may change where the lr of the `done` epochs stays the same."""
    problems = []
    for key in sorted(set(saved) | set(new)):
        if key in ("epochs", "lr_milestones"):
            continue
        if saved.get(key) != new.get(key):
            problems.append(f"{flag_name(key)} is {new.get(key)!r} but the checkpoint's run "
                            f"used {saved.get(key)!r}")
    if new["epochs"] < done:
        problems.append(f"--epochs {new['epochs']} is below the {done} epochs already done")
    if not problems and _lr_schedule(saved, done) != _lr_schedule(new, done):
        problems.append(f"--lr-milestones {list(new['lr_milestones'])} change the lr of epochs "
                        f"already done (the checkpoint's run used "
                        f"{list(saved['lr_milestones'])})")
    return problems


def check_resume(ckpt: dict[str, Any], new: dict[str, Any], path: str | Path) -> None:
    """ConfigError listing every setting that would change what the checkpoint already ran."""
    problems = resume_problems(ckpt["config"], new, len(ckpt["metrics"]))
    if problems:
        raise ConfigError(f"--resume {path}: " + "; ".join(problems) + ". These would change "
                          "what already ran: keep the checkpoint's settings (only --epochs may "
                          "grow), or start a new run with another --out")
