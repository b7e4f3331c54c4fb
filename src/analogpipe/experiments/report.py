"""results.csv, the analysis behind the tables, the claim verdicts, and report.md.

Everything here is computed from the per-epoch rows of ``results.csv`` (so a report can be
rebuilt from that file alone); the verdicts in "Which of the paper's claims this run supports"
are comparisons of those numbers against thresholds stated in the report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analogpipe.experiments.paper import RunSpec, Settings
from analogpipe.experiments.runner import read_history, run_dir
from analogpipe.timing.cycles import closed_form

RESULT_COLUMNS = (
    "run", "experiments", "scheme", "model", "stages", "microbatches", "micro_batch_size",
    "lr", "ap_lr_policy", "tau", "seed", "t_f", "t_b", "init", "status", "epoch", "samples",
    "cycles", "updates", "lr_epoch", "test_acc", "test_loss", "train_loss", "train_acc",
    "sat_max", "sat_mean",
)
_INT = {"stages", "microbatches", "micro_batch_size", "seed", "epoch", "samples"}
_STR = {"run", "experiments", "scheme", "model", "ap_lr_policy", "init", "status"}

# thresholds of the verdicts (absolute test accuracy, ratios)
ACC_TOL = 0.02  # "matches": at most 2 accuracy points below the reference (means over seeds)
SAMPLES_RATIO = 1.5  # "about as many samples": AP / SP samples-to-target at most 1.5
EFFICIENCY = 0.5  # "near-linear": AP speedup / M at least 0.5 at every M, growing with M
RANK_CORR = 0.5  # trends over tau: Spearman correlation of at least 0.5 in the claimed direction


# ------------------------------------------------------------------------------ files
def atomic_write(path: Path, data: str | bytes) -> None:
    """Write via a temporary file and os.replace: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


def collect_rows(specs: list[RunSpec], root: str | Path, settings: Settings) -> list[dict]:
    """One row per (run, evaluated epoch), from each run's metrics.jsonl."""
    rows = []
    for spec in specs:
        d = run_dir(root, spec)
        status = "missing"
        try:
            status = json.loads((d / "reproduce.json").read_text()).get("status", "missing")
        except (OSError, ValueError):
            pass
        c = spec.config
        history = read_history(d)
        if not history:  # diverged (or cut) in its first epoch: keep the run visible
            history = [{"epoch": 0, "samples": 0, "cycles": 0.0, "updates": 0.0, "lr": c.lr,
                        "test_acc": math.nan, "test_loss": math.nan, "train_loss": math.nan,
                        "train_acc": math.nan, "saturation": {}}]
        for h in history:
            sat = h.get("saturation") or {}
            rows.append({
                "run": spec.name, "experiments": ";".join(spec.experiments),
                "scheme": c.scheme, "model": c.model, "stages": c.stages,
                "microbatches": c.microbatches, "micro_batch_size": c.micro_batch_size,
                "lr": c.lr, "ap_lr_policy": settings.ap_lr,
                "tau": math.inf if c.scheme == "digital" else c.tau, "seed": c.seed,
                "t_f": c.t_f, "t_b": c.t_b, "init": spec.init, "status": status,
                "epoch": h["epoch"], "samples": h["samples"], "cycles": h["cycles"],
                "updates": h["updates"], "lr_epoch": h["lr"], "test_acc": h["test_acc"],
                "test_loss": h["test_loss"], "train_loss": h["train_loss"],
                "train_acc": h["train_acc"],
                "sat_max": _mean([v["max"] for v in sat.values()]),
                "sat_mean": _mean([v["mean"] for v in sat.values()]),
            })
    return rows


def csv_text(rows: list[dict], columns: tuple[str, ...] = RESULT_COLUMNS) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def read_results(path: str | Path) -> list[dict]:
    """results.csv back into typed rows."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if k in _STR:
                    row[k] = v
                elif k in _INT:
                    row[k] = int(float(v))
                else:
                    row[k] = float(v) if v not in ("", None) else math.nan
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------ statistics
def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class Stat:
    """Mean and spread over seeds; NaNs (e.g. target not reached) are left out of n."""

    mean: float
    std: float
    lo: float
    hi: float
    n: int
    total: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        ok = [float(v) for v in values if not math.isnan(float(v))]
        if not ok:
            return cls(math.nan, math.nan, math.nan, math.nan, 0, len(values))
        std = statistics.stdev(ok) if len(ok) > 1 else 0.0
        return cls(_mean(ok), std, min(ok), max(ok), len(ok), len(values))

    def fmt(self, digits: int = 3, pct: bool = False, what: str = "reached") -> str:
        """'mean ± std [min, max]', with '(k/n what)' when some seeds have no value."""
        if self.n == 0:
            return f"not reached (0/{self.total})" if what == "reached" else "-"
        f = 100.0 if pct else 1.0
        d = max(digits - 2, 1) if pct else digits
        text = f"{self.mean * f:.{d}f} ± {self.std * f:.{d}f}"
        if self.n > 1:
            text += f" [{self.lo * f:.{d}f}, {self.hi * f:.{d}f}]"
        if self.n < self.total:
            text += f" ({self.n}/{self.total} {what})"
        return text


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (average ranks for ties); NaN when undefined."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0
            i = j + 1
        return r

    pairs = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3:
        return math.nan
    rx, ry = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    mx, my = _mean(rx), _mean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def crossing(curve: list[dict], target: float, chance: float) -> tuple[float, float]:
    """(samples, cycles) where the test accuracy first reaches `target`.

    Linear interpolation between consecutive evaluations (end of each epoch); before the first
    epoch the curve starts at (0 samples, 0 cycles, chance accuracy). NaN if never reached.
    """
    prev = (0.0, 0.0, chance)
    for r in sorted(curve, key=lambda r: r["epoch"]):
        s, c, a = float(r["samples"]), float(r["cycles"]), float(r["test_acc"])
        if math.isnan(a):
            continue
        if a >= target:
            s0, c0, a0 = prev
            frac = 1.0 if a <= a0 else (target - a0) / (a - a0)
            frac = min(max(frac, 0.0), 1.0)
            return s0 + frac * (s - s0), c0 + frac * (c - c0)
        prev = (s, c, a)
    return math.nan, math.nan


# ------------------------------------------------------------------------------ analysis
def _runs(rows: list[dict], exp: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if exp in r["experiments"].split(";"):
            out[r["run"]].append(r)
    for v in out.values():
        v.sort(key=lambda r: r["epoch"])
    return out


def _final_acc(curve: list[dict], epochs: int, chance: float) -> float:
    """Last epoch's test accuracy; a diverged or unfinished run counts as chance."""
    if not curve or curve[-1]["status"] == "diverged" or curve[-1]["epoch"] < epochs:
        return chance
    return float(curve[-1]["test_acc"])


def analyse(rows: list[dict], s: Settings) -> dict[str, Any]:
    """Every table of the report, as numbers (Stats) keyed by experiment."""
    out: dict[str, Any] = {}
    # --- experiment acc: curves and final accuracy of digital / WOP / SP / AP at M
    runs = _runs(rows, "acc")
    by_scheme: dict[str, list[list[dict]]] = defaultdict(list)
    for curve in runs.values():
        r0 = curve[0]
        if r0["scheme"] == "digital" or (r0["stages"] == s.acc_stages and r0["tau"] == s.tau):
            by_scheme[r0["scheme"]].append(curve)
    acc: dict[str, Any] = {}
    for scheme in ("digital", "wop", "sp", "ap"):
        curves = by_scheme.get(scheme, [])
        if not curves:
            continue
        epochs = sorted({r["epoch"] for c in curves for r in c if r["epoch"] > 0})
        points = []
        for e in epochs:
            at = [r for c in curves for r in c if r["epoch"] == e]
            points.append({"epoch": e, "samples": _mean([r["samples"] for r in at]),
                           "cycles": _mean([r["cycles"] for r in at]),
                           "acc": Stat.of([r["test_acc"] for r in at])})
        acc[scheme] = {"curve": points, "lr": curves[0][0]["lr"],
                       "final": Stat.of([_final_acc(c, s.epochs, s.chance) for c in curves]),
                       "diverged": sum(c[-1]["status"] == "diverged" for c in curves),
                       "n": len(curves)}
    out["acc"] = acc

    # --- experiment speedup: samples / cycles to target, measured vs closed form
    runs = _runs(rows, "speedup")
    per: dict[tuple[str, int], dict[int, tuple[float, float]]] = defaultdict(dict)
    epoch_cycles: dict[tuple[str, int], float] = {}
    samples_per_epoch = math.nan
    for curve in runs.values():
        r0 = curve[0]
        if r0["tau"] != s.tau:
            continue
        key = (r0["scheme"], r0["stages"])
        per[key][r0["seed"]] = crossing(curve, s.target_acc, s.chance)
        epoch_cycles[key] = float(curve[0]["cycles"])
        samples_per_epoch = float(curve[0]["samples"])
    wop = next((v for (sc, _), v in per.items() if sc == "wop"), {})
    # SP makes WOP's updates: check it on the data (same test accuracy every epoch and seed)
    wop_acc = {(c[0]["seed"], r["epoch"]): r["test_acc"] for c in runs.values()
               if c[0]["scheme"] == "wop" and c[0]["tau"] == s.tau for r in c}
    sp_acc = [((c[0]["seed"], r["epoch"]), r["test_acc"]) for c in runs.values()
              if c[0]["scheme"] == "sp" and c[0]["tau"] == s.tau for r in c]
    sp_equals_wop = (all(wop_acc.get(k) == v for k, v in sp_acc) if sp_acc and wop_acc
                     else None)
    table = []
    B, b = s.microbatches, s.micro_batch_size
    steps = max(int(samples_per_epoch // (B * b)), 1) if not math.isnan(samples_per_epoch) else 1
    wop_samples = Stat.of([v[0] for v in wop.values()])
    for M in s.stage_list:
        for scheme in ("sp", "ap"):
            seeds = per.get((scheme, M))
            if not seeds:
                continue
            speed = [wop[sd][1] / c if sd in wop and c > 0 else math.nan
                     for sd, (_, c) in seeds.items()]
            cf = closed_form(scheme, M, B, steps, t_f=1.0 / M, t_b=1.0 / M)
            per_sample = cf["makespan"] / (steps * B * b)
            table.append({
                "M": M, "scheme": scheme,
                "samples": Stat.of([v[0] for v in seeds.values()]),
                "cycles": Stat.of([v[1] for v in seeds.values()]),
                "speedup": Stat.of(speed),
                "cf_speedup": cf["speedup_over_wop"],
                "cf_cycles": wop_samples.mean * per_sample if wop_samples.n else math.nan,
                "epoch_cycles": epoch_cycles.get((scheme, M), math.nan),
                "cf_epoch_cycles": cf["makespan"],
            })
    out["speedup"] = {
        "rows": table, "target": s.target_acc, "steps_per_epoch": steps,
        "sp_equals_wop": sp_equals_wop,
        "wop_samples": wop_samples, "wop_cycles": Stat.of([v[1] for v in wop.values()]),
        "wop_epoch_cycles": next((c for (sc, _), c in epoch_cycles.items() if sc == "wop"),
                                 math.nan),
        "cf_wop_epoch_cycles": closed_form("wop", 1, B, steps)["makespan"],
    }

    # --- experiment tau: final accuracy and saturation
    runs = _runs(rows, "tau")
    groups: dict[tuple[str, float], list[list[dict]]] = defaultdict(list)
    for curve in runs.values():
        r0 = curve[0]
        if r0["scheme"] == "digital" or r0["stages"] == s.acc_stages:
            groups[(r0["scheme"], r0["tau"])].append(curve)
    tau_rows = []
    order = {"wop": 0, "ap": 1, "digital": 2}
    for (scheme, tau), curves in sorted(groups.items(),
                                        key=lambda kv: (order.get(kv[0][0], 3), kv[0][1])):
        tau_rows.append({
            "scheme": scheme, "tau": tau,
            "final": Stat.of([_final_acc(c, s.epochs, s.chance) for c in curves]),
            "sat_max": Stat.of([c[-1]["sat_max"] for c in curves]),
            "sat_mean": Stat.of([c[-1]["sat_mean"] for c in curves]),
            "diverged": sum(c[-1]["status"] == "diverged" for c in curves),
        })
    out["tau"] = tau_rows
    out["n_seeds"] = s.seeds
    return out


# ------------------------------------------------------------------------------ claims
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


def claims(a: dict[str, Any], s: Settings, conv: dict[str, Any] | None = None) -> list[dict]:
    """Verdict per claim of the paper, computed from the analysis (thresholds in the text)."""
    out = []

    def add(claim: str, verdict: str, evidence: str, rule: str) -> None:
        out.append({"claim": claim, "verdict": verdict, "evidence": evidence, "rule": rule})

    acc = a["acc"]
    M = s.acc_stages
    for ref, label in (("sp", "SP"), ("digital", "digital SGD")):
        if "ap" in acc and ref in acc and acc["ap"]["final"].n and acc[ref]["final"].n:
            ap_m, ref_m = acc["ap"]["final"].mean, acc[ref]["final"].mean
            diff = ap_m - ref_m
            verdict = SUPPORTED if diff >= -ACC_TOL else NOT_SUPPORTED
            ev = f"final test accuracy AP {ap_m:.3f} vs {label} {ref_m:.3f} (diff {diff:+.3f})"
        else:
            verdict, ev = INCONCLUSIVE, "runs missing"
        add(f"AP (M={M}) matches {label} accuracy", verdict, ev,
            f"AP mean >= {label} mean - {ACC_TOL}")

    rows = {(r["scheme"], r["M"]): r for r in a["speedup"]["rows"]}
    wop_c = a["speedup"]["wop_cycles"]
    ap, sp = rows.get(("ap", M)), rows.get(("sp", M))
    if ap and sp and ap["cycles"].n == ap["cycles"].total and sp["cycles"].n and wop_c.n:
        ok = ap["cycles"].mean < sp["cycles"].mean and ap["cycles"].mean < wop_c.mean
        verdict = SUPPORTED if ok else NOT_SUPPORTED
        ev = (f"cycles to {s.target_acc:.0%}: AP {ap['cycles'].mean:.0f}, "
              f"SP {sp['cycles'].mean:.0f}, WOP {wop_c.mean:.0f}")
    else:
        verdict, ev = INCONCLUSIVE, "target not reached by every run"
    add(f"AP needs fewer cycles than SP and WOP (M={M})", verdict, ev,
        "AP mean cycles-to-target < SP's and < WOP's; every AP seed reaches the target")

    ratios = []
    for Mi in s.stage_list:
        ap_i, sp_i = rows.get(("ap", Mi)), rows.get(("sp", Mi))
        if ap_i and sp_i and ap_i["samples"].n and sp_i["samples"].n:
            ratios.append((Mi, ap_i["samples"].mean / sp_i["samples"].mean,
                           ap_i["samples"].n == ap_i["samples"].total))
    if ratios and all(r[2] for r in ratios):
        worst = max(ratios, key=lambda r: r[1])
        verdict = SUPPORTED if worst[1] <= SAMPLES_RATIO else NOT_SUPPORTED
        ev = ", ".join(f"M={m}: {r:.2f}" for m, r, _ in ratios) + " (AP/SP samples-to-target)"
    else:
        verdict, ev = INCONCLUSIVE, "target not reached by every AP run"
    add("AP needs about as many samples as SP", verdict, ev,
        f"AP / SP samples-to-target <= {SAMPLES_RATIO} at every M")

    eff = [(r["M"], r["speedup"].mean) for r in a["speedup"]["rows"]
           if r["scheme"] == "ap" and r["speedup"].n == r["speedup"].total]
    all_ap = [r for r in a["speedup"]["rows"] if r["scheme"] == "ap"]
    if len(eff) >= 2 and len(eff) == len(all_ap):
        eff.sort()
        ok = (all(sp_ / m >= EFFICIENCY for m, sp_ in eff)
              and all(b_[1] > a_[1] for a_, b_ in zip(eff, eff[1:])))
        verdict = SUPPORTED if ok else NOT_SUPPORTED
        ev = ", ".join(f"M={m}: {v:.2f}x" for m, v in eff) + " (measured AP speedup over WOP)"
    else:
        verdict, ev = INCONCLUSIVE, "need >= 2 values of M with every AP seed at the target"
    add("Near-linear speedup with M (AP)", verdict, ev,
        f"speedup / M >= {EFFICIENCY} at every M, and speedup increasing with M")

    tau_rows = [r for r in a["tau"] if r["scheme"] != "digital" and r["final"].n]
    for scheme in ("wop", "ap"):
        rs = sorted((r for r in tau_rows if r["scheme"] == scheme), key=lambda r: r["tau"])
        if len(rs) >= 3:
            taus = [r["tau"] for r in rs]
            accs = [r["final"].mean for r in rs]
            rho = spearman(taus, accs)
            drop = accs[-1] - accs[0]
            ok = rho >= RANK_CORR and drop > ACC_TOL
            verdict = SUPPORTED if ok else NOT_SUPPORTED
            ev = ("final acc " + ", ".join(f"tau {t:g}: {v:.3f}" for t, v in zip(taus, accs))
                  + f"; Spearman(tau, acc) {rho:+.2f}")
        else:
            verdict, ev = INCONCLUSIVE, "fewer than 3 tau values"
        add(f"Asymptotic error grows as tau shrinks ({scheme.upper()})", verdict, ev,
            f"Spearman(tau, final acc) >= {RANK_CORR} and acc(largest tau) - acc(smallest "
            f"tau) > {ACC_TOL}")
    rs = sorted((r for r in a["tau"] if r["scheme"] != "digital" and r["sat_max"].n),
                key=lambda r: (r["scheme"], r["tau"]))
    if len(rs) >= 3:
        # the theory's floor grows with W_max / tau, the largest saturation: use the max
        rho_sat = spearman([r["tau"] for r in rs], [r["sat_max"].mean for r in rs])
        by_tau: dict[float, list[float]] = defaultdict(list)
        for r in rs:
            by_tau[r["tau"]].append(r["sat_max"].mean)
        sat_by_tau = sorted((t, _mean(v)) for t, v in by_tau.items())
        acc_by_tau = defaultdict(list)
        for r in tau_rows:
            acc_by_tau[r["tau"]].append(r["final"].mean)
        rho_acc = spearman([t for t, _ in sat_by_tau], [_mean(acc_by_tau[t]) for t, _ in
                                                        sat_by_tau])
        ok = rho_sat <= -RANK_CORR and rho_acc >= RANK_CORR
        verdict = SUPPORTED if ok else NOT_SUPPORTED
        ev = ("max saturation " + ", ".join(f"tau {t:g}: {v:.2f}" for t, v in sat_by_tau)
              + f"; Spearman(tau, saturation) {rho_sat:+.2f}")
    else:
        verdict, ev = INCONCLUSIVE, "fewer than 3 tau runs"
    add("Smaller tau saturates the weights more, and accuracy falls with it", verdict, ev,
        f"Spearman(tau, max saturation) <= -{RANK_CORR} and Spearman(tau, final acc) >= "
        f"{RANK_CORR} (WOP and AP pooled; max saturation = per-layer max abs(w)/tau averaged over "
        f"layers, the theory's W_max / tau)")

    if conv is not None and conv.get("floors"):
        fl = sorted(conv["floors"].items())
        taus = [float(t) for t, _ in fl]
        floors = [v for _, v in fl]
        rho = spearman(taus, floors)
        verdict = SUPPORTED if rho <= -RANK_CORR and floors[0] > floors[-1] else NOT_SUPPORTED
        ev = ", ".join(f"tau {t:g}: {v:.3g}" for t, v in zip(taus, floors)) + \
            f" (E_K floor); Spearman(tau, floor) {rho:+.2f}"
        add("E_K reaches a floor that grows as tau shrinks (teacher regression)", verdict, ev,
            f"Spearman(tau, floor) <= -{RANK_CORR} and floor(smallest tau) > floor(largest)")
    return out


# ------------------------------------------------------------------------------ markdown
def _num(v: float, d: int = 0) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def _lr_text(s: Settings) -> str:
    ap = s.lr_for("ap")
    if s.ap_lr == "scaled":
        why = (f"AP uses lr / B = {s.lr:g} / {s.microbatches} = {ap:g}: SP and WOP make one "
               f"update per mini-batch of B = {s.microbatches} micro-batches (loss averaged "
               f"over the mini-batch), AP makes one per micro-batch; at the same lr AP would "
               f"take B steps of the same size per mini-batch, a B times larger step per sample. "
               f"lr / B makes the first-order progress per sample equal (the linear scaling "
               f"rule), so a comparison at equal samples isolates staleness and the clock. "
               f"`--ap-lr same` runs AP at lr {s.lr:g} as the paper does.")
    else:
        why = (f"every scheme uses lr {s.lr:g}, as the paper does; note that AP then makes B = "
               f"{s.microbatches} times as many updates of the same size per sample as SP/WOP.")
    return (f"- Learning rates (base values, before the decay): digital SGD, WOP and SP lr "
            f"{s.lr:g}; AP lr {ap:g}. Why: {why} Each run's lr is the `lr` column of "
            f"results.csv.")


def render(a: dict[str, Any], verdicts: list[dict], s: Settings, figures: dict[str, str],
           timing: dict[str, Any] | None = None, conv: dict[str, Any] | None = None) -> str:
    """report.md as text."""
    n = s.seeds
    L: list[str] = []
    L += ["# analogpipe reproduce: pipeline analog training (Wu et al., arXiv 2410.15155)", ""]
    mode = "quick (`--quick`)" if s.quick else "full"
    L += ["## What was run", "",
          f"- Mode: {mode}; dataset `{s.dataset}`"
          + (f" (subset of {s.subset} training samples)" if s.subset else "")
          + f"; seeds n = {n} (seeds 0..{n - 1}); every number below is mean ± std "
            f"[min, max] over the n seeds unless stated.",
          f"- Models: experiments 1, 2 and 4 use `{s.model}`"
          + (f" (depth {s.depth}, width {s.width})" if s.depth else "")
          + f"; experiment 3 uses `{s.speed_model}`"
          + (f" (depth {s.speed_depth}, width {s.speed_width})" if s.speed_depth else "")
          + f" for every M in {list(s.stage_list)}. Initialisation: `{s.init}`"
          + (" (Kaiming-normal weights N(0, 2/fan_in), logits layer N(0, 1/fan_in), zero "
             "biases; torch's default init does not train a 7-hidden-layer MLP)."
             if s.init == "he" else " (torch defaults)."),
          f"- Training: {s.epochs} epochs, mini-batch {s.microbatches * s.micro_batch_size} = "
          f"B {s.microbatches} micro-batches x b {s.micro_batch_size}; lr decay x0.1 at epochs "
          f"{list(s.lr_milestones) or 'none'}; analog SGD on the soft-bounds device, tau "
          f"{s.tau:g} (saturation sweep: {list(s.taus)}), expected update per sample, 8-bit IO, "
          f"0.5% output noise, learnable output scaling; device `{s.device}`.",
          _lr_text(s),
          "- Clock: one cycle is one stage's forward (t_f) or backward-with-update (t_b) of "
          "one micro-batch, unit costs per stage. Every stage gets its share of the model, "
          "t_f = t_b = 1/M (M stages), so one full forward + backward of a micro-batch is 2 "
          "cycles for every M and all M share one clock (digital SGD runs without a pipeline, "
          "on the same 2 cycles per micro-batch). Cycles come from the cycle model "
          "(`analogpipe.timing.cycles.simulate`) run on each epoch's schedule; the asynchronous "
          "pipeline drains at each epoch's end. The AIMC cost model (one MVM per output pixel, "
          "pulse-train update time) is not used here: for the MLP every layer is one MVM, so "
          "unit costs per stage are its AIMC cost up to a constant.",
          "- Accuracy is evaluated at the end of each epoch (output noise on, as on hardware).",
          ""]
    if timing:
        L += [f"- This reproduction took {timing.get('wall_s', math.nan):.0f} s wall up to this "
              f"report, "
              f"{timing.get('cpu_s', math.nan):.0f} s CPU summed over runs, "
              f"{timing.get('workers', 1)} worker process(es), "
              f"{timing.get('trained', 0)} runs trained, {timing.get('skipped', 0)} reused.", ""]

    L += ["## Which of the paper's claims this run supports", "",
          "Computed from the tables below; each verdict applies the rule in its row to the "
          f"means over n = {n} seeds.", "",
          "| claim | verdict | measured | rule |", "|---|---|---|---|"]
    for v in verdicts:
        L.append(f"| {v['claim']} | **{v['verdict']}** | {v['evidence']} | {v['rule']} |")
    L.append("")
    if n < 2:
        L += ["With n = 1 there is no spread: the verdicts are single draws.", ""]

    acc = a["acc"]
    L += [f"## 1. Test accuracy vs epoch (M = {s.acc_stages})", ""]
    if "acc_epoch" in figures:
        L += [f"![accuracy vs epoch]({figures['acc_epoch']})", ""]
    L += ["| scheme | lr | final test accuracy (%) | runs (diverged) |", "|---|---|---|---|"]
    for scheme, d in acc.items():
        L.append(f"| {_label(scheme, s.acc_stages)} | {d['lr']:g} | {d['final'].fmt(pct=True)} "
                 f"| {d['n']} ({d['diverged']}) |")
    L += ["", "A diverged run counts as chance accuracy.", ""]
    L += [f"## 2. Test accuracy vs clock cycles (M = {s.acc_stages})", ""]
    if "acc_cycles" in figures:
        L += [f"![accuracy vs cycles]({figures['acc_cycles']})", ""]
    L += ["| scheme | cycles per epoch | cycles, all epochs |", "|---|---|---|"]
    for scheme, d in acc.items():
        c = d["curve"]
        if c:
            L.append(f"| {_label(scheme, s.acc_stages)} | {_num(c[0]['cycles'])} | "
                     f"{_num(c[-1]['cycles'])} |")
    L.append("")

    sp = a["speedup"]
    L += ["## 3. Cycles to a target accuracy and speedup vs M", "",
          f"Target: test accuracy {sp['target']:.0%}. The crossing is interpolated linearly "
          f"between end-of-epoch evaluations (samples and cycles), starting from chance "
          f"accuracy {s.chance:g} at 0 samples. Speedup = WOP's cycles-to-target / the "
          f"scheme's, per seed, then mean ± spread. WOP is run once per seed (M = "
          f"{s.acc_stages}): its updates do not depend on M and with t_f = t_b = 1/M neither "
          f"does its clock ({_num(sp['wop_epoch_cycles'])} cycles per epoch measured, "
          f"{_num(sp['cf_wop_epoch_cycles'])} closed form), so it is the reference of every M. "
          f"SP makes WOP's updates, so its samples-to-target equal WOP's and its speedup is "
          f"the clock's ({_sp_check(sp['sp_equals_wop'])}). Closed form: `closed_form` with "
          f"K = {sp['steps_per_epoch']} "
          f"mini-batches per epoch (the pipeline drains every epoch); its cycles-to-target is "
          f"WOP's measured samples-to-target on the scheme's closed-form clock (equal samples).",
          ""]
    if "speedup" in figures:
        L += [f"![speedup vs M]({figures['speedup']})", ""]
    L += [f"WOP: samples to target {sp['wop_samples'].fmt(0)}, cycles "
          f"{sp['wop_cycles'].fmt(0)}.", "",
          "| M | scheme | samples to target | cycles to target | closed-form cycles | "
          "speedup (measured) | speedup (closed form) | cycles/epoch run (closed form) |",
          "|---|---|---|---|---|---|---|---|"]
    for r in sp["rows"]:
        L.append(f"| {r['M']} | {r['scheme'].upper()} | {r['samples'].fmt(0)} | "
                 f"{r['cycles'].fmt(0)} | {_num(r['cf_cycles'])} | {r['speedup'].fmt(2)} | "
                 f"{r['cf_speedup']:.2f} | {_num(r['epoch_cycles'], 1)} "
                 f"({_num(r['cf_epoch_cycles'], 1)}) |")
    L.append("")

    L += ["## 4. Saturation sweep over tau", "",
          f"WOP and AP at M = {s.acc_stages}; digital SGD is tau = inf. Saturation of an element "
          f"is |w| / tau on the device (weights are programmed at up to tau/2, so 0.5 at "
          f"start); per layer the max and the mean over the array, averaged over layers, at "
          f"the last epoch.", ""]
    if "tau" in figures:
        L += [f"![tau sweep]({figures['tau']})", ""]
    L += ["| scheme | tau | final test accuracy (%) | saturation max | saturation mean | "
          "diverged |", "|---|---|---|---|---|---|"]
    for r in a["tau"]:
        sat_max = r["sat_max"].fmt(3, what="with data") if r["scheme"] != "digital" else "-"
        sat_mean = r["sat_mean"].fmt(3, what="with data") if r["scheme"] != "digital" else "-"
        L.append(f"| {r['scheme'].upper()} | {r['tau']:g} | {r['final'].fmt(pct=True)} | "
                 f"{sat_max} | {sat_mean} | {r['diverged']} |")
    L.append("")

    if conv is not None:
        L += ["## 5. Convergence-rate check (SPEC section 6)", "",
              f"Teacher-student linear regression (dataset `teacher`), one analog linear layer "
              f"trained by analog SGD (soft bounds, expected update per micro-batch, "
              f"perfect IO), lr {conv['lr']:g}, micro-batch {conv['batch']}, "
              f"{conv['steps']} steps, seed 0. E_K = (1/K) sum_k ||grad f(W_k)||^2 with the "
              f"full-batch training gradient; floor = mean of ||grad f(W_k)||^2 over the last "
              f"quarter of the steps.", ""]
        if "convergence" in figures:
            L += [f"![E_K vs K]({figures['convergence']})", ""]
        L += ["| tau | floor of ‖grad f‖² | E_K at the end | max saturation |",
              "|---|---|---|---|"]
        for t, v in sorted(conv["floors"].items(), key=lambda kv: float(kv[0])):
            L.append(f"| {float(t):g} | {v:.3g} | {conv['ek_end'][t]:.3g} | "
                     f"{conv['sat'][t]:.2f} |")
        L.append("")
    L += ["## Files", "",
          "- `results.csv`: one row per run and epoch (settings incl. each run's lr, test "
          "accuracy, samples, cycles, saturation).",
          "- `runs/<name>/`: each run's run.json, metrics.jsonl, checkpoint.pt, reproduce.json.",
          ""]
    return "\n".join(L)


def _sp_check(same: bool | None) -> str:
    if same is None:
        return "not checked: runs missing"
    if same:
        return "checked on this run: SP's test accuracy equals WOP's at every epoch, seed and M"
    return "WARNING: SP's test accuracy differs from WOP's in this run"


def _label(scheme: str, M: int) -> str:
    return {"digital": "digital SGD", "wop": f"analog WOP (M={M})", "sp": f"analog SP (M={M})",
            "ap": f"analog AP (M={M})"}.get(scheme, scheme)


def write_report(out: str | Path, rows: list[dict], s: Settings,
                 timing: dict[str, Any] | None = None,
                 conv: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.csv, the figures and report.md into `out` (each written atomically)."""
    from analogpipe.experiments import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.csv", csv_text(rows))
    rows = read_results(out / "results.csv")  # the report is built from the file
    figures = plots.make_figures(out / "results.csv", out, s, conv=conv)
    a = analyse(rows, s)
    verdicts = claims(a, s, conv)
    atomic_write(out / "report.md", render(a, verdicts, s, figures, timing, conv))
    return {"analysis": a, "claims": verdicts, "figures": figures}
