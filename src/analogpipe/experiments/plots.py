"""Figures of the report, drawn from each group's analysis data only (matplotlib, Agg).

Readability rules: every series has its own marker and line style, series that share x values
are offset horizontally by a small stated amount so that none hides another, ticks sit at the
swept values, axes carry units, the seed count is in the title and diverged runs are marked.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analogpipe.experiments.analysis import atomic_write  # noqa: E402
from analogpipe.experiments.plan import Settings  # noqa: E402
from analogpipe.experiments.stats import Interval  # noqa: E402

STYLE = {  # color, marker, line style
    "digital": ("black", "s", "-"), "sp": ("tab:orange", "^", "--"),
    "ap_same": ("tab:green", "o", "-"), "ap_scaled": ("tab:purple", "D", ":"),
    "wop": ("tab:blue", "v", "-."),
}


def _save(fig: Any, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path.name


def _err(iv: Interval) -> tuple[float, float]:
    if not iv.defined:
        return 0.0, 0.0
    return iv.mean - iv.lo, iv.hi - iv.mean


def _errorbar(ax: Any, xs: list[float], ivs: list[Interval], *, color: str, marker: str,
              ls: str, label: str, scale: float = 1.0) -> None:
    ys = [iv.mean * scale for iv in ivs]
    lo = [_err(iv)[0] * scale for iv in ivs]
    hi = [_err(iv)[1] * scale for iv in ivs]
    ax.errorbar(xs, ys, yerr=[lo, hi], color=color, marker=marker, ls=ls, capsize=3, ms=5,
                label=label)


def staleness(a: dict, s: Settings, out: Path) -> dict[str, str]:
    rows = a["rows"]
    Ms = [x["M"] for x in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _errorbar(axes[0], Ms, [Interval.from_dict(x["acc"]) for x in rows], color="tab:green",
              marker="o", ls="-", label="AP(M)", scale=100)
    _errorbar(axes[1], Ms, [Interval.from_dict(x["samples"]) for x in rows], color="tab:green",
              marker="o", ls="-", label="AP(M)")
    for x in rows:
        note = f"{x['diverged']} div." if x["diverged"] else ""
        if x["reached"] < x["n"]:
            note += f" {x['n'] - x['reached']} not reached"
        if note:
            axes[1].annotate(note.strip(), (x["M"], Interval.from_dict(x["samples"]).mean or 0),
                             fontsize=7, xytext=(4, 4), textcoords="offset points")
    base = rows[0]
    m = s.rules.acc_margin * 100
    b_acc = Interval.from_dict(base["acc"]).mean * 100
    axes[0].axhspan(b_acc - m, b_acc + m, color="gray", alpha=0.15,
                    label=f"AP({base['M']}) ± {m:g} points (equivalence margin)")
    b_s = Interval.from_dict(base["samples"]).mean
    r = s.rules.samples_ratio
    axes[1].axhspan(b_s / r, b_s * r, color="gray", alpha=0.15,
                    label=f"AP({base['M']}) x [1/{r:g}, {r:g}] (equivalence margin)")
    axes[0].set_ylabel("final test accuracy (%)")
    axes[1].set_ylabel(f"samples to target {a['target']['target']:.3f} (training samples)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(Ms, [str(m) for m in Ms])
        ax.set_xlabel("pipeline stages M")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{s.dataset}: mean and 95% t CI over n = {s.seeds} seeds, lr {s.lr:g}")
    return {"staleness": _save(fig, out / "fig_staleness.png")}


def equivalence(a: dict, s: Settings, out: Path) -> dict[str, str]:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    keys = list(a["curves"])
    off = 0.08  # epochs: series are shifted by k * off so that none hides another
    names = {"digital": "digital SGD", "sp": "analog SP (= WOP)",
             "ap_same": "analog AP, lr same", "ap_scaled": "analog AP, lr / B"}
    for k_i, k in enumerate(keys):
        pts = a["curves"][k]
        c, m, ls = STYLE[k]
        xs = [p["epoch"] + (k_i - (len(keys) - 1) / 2) * off for p in pts]
        info = a["cells"][k]
        label = names[k] + (f" ({info['diverged']} diverged)" if info["diverged"] else "")
        _errorbar(ax, xs, [Interval.from_dict({x: p[x] for x in
                                               ("mean", "lo", "hi", "n", "total", "sd")})
                           for p in pts], color=c, marker=m, ls=ls, label=label, scale=100)
    epochs = sorted({p["epoch"] for k in keys for p in a["curves"][k]})
    ax.set_xticks(epochs)
    ax.set_xlabel(f"epoch (series offset by {off:g} epoch each for legibility)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{s.dataset}, M = {s.acc_stages}: mean and 95% CI, n = {s.seeds} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return {"equivalence": _save(fig, out / "fig_equivalence.png")}


def speedup(a: dict, s: Settings, out: Path) -> dict[str, str]:
    rows = a["rows"]
    Ms = [x["M"] for x in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(Ms, [x["ideal"] for x in rows], color="gray", ls=":", marker="x",
            label="ideal: M x density")
    ax.plot(Ms, [s.rules.near_linear * x["ideal"] for x in rows], color="gray", ls="--", lw=0.8,
            label=f"near-linear threshold ({s.rules.near_linear:g} x ideal)")
    _errorbar(ax, [m * 0.97 for m in Ms], [Interval.from_dict(x["speedup"]) for x in rows],
              color="tab:green", marker="o", ls="-", label="AP(M)/AP(1), AIMC clock")
    _errorbar(ax, [m * 1.03 for m in Ms],
              [Interval.from_dict(x["speedup_balanced"]) for x in rows], color="tab:olive",
              marker="s", ls="-.", label="AP(M)/AP(1), balanced clock")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(Ms, [str(m) for m in Ms])
    ax.set_yticks(Ms, [str(m) for m in Ms])
    ax.set_xlabel("pipeline stages M (series offset by ±3% for legibility)")
    ax.set_ylabel("speedup in cycles to target (x)")
    ax.set_title(f"{s.dataset}: geometric mean and 95% CI, n = {s.seeds} seeds")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return {"speedup": _save(fig, out / "fig_speedup.png")}


def tau(a: dict, s: Settings, out: Path) -> dict[str, str]:
    rows = a["rows"]
    fin = [x for x in rows if x["key"] != "ideal"]
    taus = [x["tau"] for x in fin]
    fig, axes = plt.subplots(1, 3, figsize=(15.5, 4.2))
    _errorbar(axes[0], [t * 1.03 for t in taus], [Interval.from_dict(x["sat"]) for x in fin],
              color="tab:red", marker="o", ls="-", label="max|W|/tau over training (x +3%)")
    axes[0].plot([t * 0.97 for t in taus], [s.sweep_omega / t for t in taus], color="gray",
                 ls=":", marker="x", label="at init, omega/tau (x -3%)")
    axes[0].set_ylabel("max |W| / tau (fraction of range)")
    ideal = next((x for x in rows if x["key"] == "ideal"), None)
    for ax, key, lab, sc in ((axes[1], "loss", "final test loss (cross-entropy, nats)", 1.0),
                             (axes[2], "acc", "final test accuracy (%)", 100.0)):
        _errorbar(ax, taus, [Interval.from_dict(x[key]) for x in fin], color="tab:green",
                  marker="o", ls="-", label=f"AP (M = {s.acc_stages}), soft bounds", scale=sc)
        if ideal is not None:
            iv = Interval.from_dict(ideal[key])
            ax.axhline(iv.mean * sc, color="black", ls="--", label="ideal device (tau = inf)")
            if iv.defined:
                ax.axhspan(iv.lo * sc, iv.hi * sc, color="black", alpha=0.1)
        ax.set_ylabel(lab)
    for x in rows:  # diverged runs are left out of the loss: say so at the point
        if x["diverged"]:
            y = Interval.from_dict(x["loss"]).mean
            at = x["tau"] if x["key"] != "ideal" else taus[-1]
            axes[1].annotate(f"{x['key']}: {x['diverged']}/{x['n']} diverged", (at, y)
                             if math.isfinite(y) else (0.5, 0.05), fontsize=7,
                             xycoords="data" if math.isfinite(y) else "axes fraction",
                             xytext=(-90 if x["key"] == "ideal" else 4, 4),
                             textcoords="offset points", color="tab:red")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(taus, [f"{t:g}" for t in taus])
        ax.set_xlabel("tau (device bound, conductance units)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{s.dataset}: omega = {s.sweep_omega:g} fixed; mean and 95% CI, n = "
                 f"{s.seeds} seeds")
    return {"tau": _save(fig, out / "fig_tau.png")}


def convergence(a: dict, s: Settings, out: Path) -> dict[str, str]:
    if not a.get("rows"):
        return {}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    markers = "osD^v<>"
    for i, (key, c) in enumerate(a["curves"].items()):
        if not c["K"]:
            continue
        axes[0].loglog(c["K"], c["E_K"], marker=markers[i % len(markers)], ms=3,
                       markevery=(i, 6), label=f"tau {key}")
    K = a["curves"]["ideal"]["K"]
    if K:
        e0 = a["curves"]["ideal"]["E_K"][0]
        axes[0].loglog(K, [e0 / math.sqrt(k) for k in K], color="gray", ls=":",
                       label="1/sqrt(K) (theory's bound shape)")
    axes[0].set_xlabel("K (updates)")
    axes[0].set_ylabel("E_K = mean_k ||grad f(W_k)||^2 (squared loss units)")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3, which="both")
    rows = a["rows"]
    shape = [x["shape"] for x in rows]
    axes[1].errorbar(shape, [Interval.from_dict(x["excess"]).mean for x in rows],
                     yerr=[list(v) for v in zip(*[_err(Interval.from_dict(x["excess"]))
                                                  for x in rows])],
                     marker="o", ls="none", capsize=3, label="floor(tau) - floor(ideal)")
    lo, hi = min(shape), max(shape)
    axes[1].loglog([lo, hi], [a["fit"]["c"] * lo, a["fit"]["c"] * hi], color="gray", ls="--",
                   label=f"fit c x shape, c = {a['fit']['c']:.3g}")
    for x in rows:
        axes[1].annotate(f"tau {x['tau']:g}", (x["shape"], Interval.from_dict(x["excess"]).mean),
                         fontsize=7, xytext=(4, -10), textcoords="offset points")
    axes[1].set_xlabel("W_max^2 / (tau^2 - W_max^2) (dimensionless, W_max measured)")
    axes[1].set_ylabel("floor excess over the ideal device (squared loss units)")
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3, which="both")
    fig.suptitle(f"teacher problem: mean over n = {s.seeds} seeds (CI on the right)")
    return {"convergence": _save(fig, out / "fig_convergence.png")}


# ------------------------------------------------------------------------------ beyond
_ALG_STYLE = {"analog-sgd": ("tab:green", "o", "-"), "tiki-taka": ("tab:purple", "D", "--")}


def _tau_axis(ax: Any, keys: list[str]) -> None:
    ax.set_xticks(range(len(keys)), [k if k == "ideal" else f"{k}" for k in keys])
    ax.set_xlabel("tau (device bound, conductance units; ideal = inf)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _floor_panel(ax: Any, rows: list[dict], keys: list[str], metric: str, scale: float,
                 series: list[tuple[str, int]]) -> None:
    """One series per (algorithm, M), offset by ±0.06 tick widths so that none hides another;
    x = position of the tau in ``keys`` (the ideal device last)."""
    n = len(series)
    for j, (alg, M) in enumerate(series):
        pts = [(keys.index(x["key"]), x) for x in rows
               if x["algorithm"] == alg and x["M"] == M and x["key"] in keys]
        pts.sort(key=lambda p: p[0])
        if not pts:
            continue
        off = (j - (n - 1) / 2) * 0.06
        color, marker, _ = _ALG_STYLE[alg]
        ls = "-" if M == 1 else "--"
        _errorbar(ax, [p[0] + off for p in pts], [Interval.from_dict(p[1][metric])
                                                  for p in pts],
                  color=color, marker=marker if M == 1 else "s", ls=ls,
                  label=f"{alg}, M = {M}", scale=scale)
        for xpos, x in pts:
            if x["diverged"]:
                ax.annotate(f"{x['diverged']}/{x['n']} div.", (xpos + off, 0.05),
                            xycoords=("data", "axes fraction"), fontsize=7, color="tab:red")


def beyond_floor(a: dict, s: Settings, out: Path) -> dict[str, str]:
    t, d = a.get("teacher", {}), a.get("digits", {})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    keys_t = [k for k in dict.fromkeys(x["key"] for x in t.get("rows", []))]
    _floor_panel(axes[0], t.get("rows", []), keys_t, "loss", 1.0,
                 [(alg, M) for M in s.bt_teacher_stages for alg in _ALG_STYLE])
    axes[0].axhline(s.bt_teacher_noise ** 2, color="gray", ls=":",
                    label=f"target noise variance {s.bt_teacher_noise ** 2:g}")
    axes[0].set_ylabel("final test MSE (teacher problem)")
    axes[0].set_title(f"teacher, {s.bt_teacher_steps} updates", fontsize=9)
    keys_d = [f"{x:g}" for x in s.sweep_taus] + ["ideal"]
    _floor_panel(axes[1], d.get("rows", []), keys_d, "acc", 100.0,
                 [(alg, M) for M in s.bt_stages for alg in _ALG_STYLE])
    axes[1].set_ylabel("final test accuracy (%)")
    axes[1].set_title(f"{s.dataset}, AP, {s.epochs} epochs", fontsize=9)
    _tau_axis(axes[0], keys_t)
    _tau_axis(axes[1], keys_d)
    fig.suptitle(f"Analog SGD vs Tiki-Taka: mean and 95% CI, n = {s.seeds} seeds (series "
                 "offset by ±0.06 tick widths)")
    return {"beyond-floor": _save(fig, out / "fig_beyond-floor.png")}


def beyond_staleness(a: dict, s: Settings, out: Path) -> dict[str, str]:
    rows = [x for x in a.get("rows", []) if "ratio" in x]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    Ms = sorted({x["M"] for x in rows})
    for j, (dc, color, marker) in enumerate((("none", "tab:green", "o"),
                                             ("pipemare", "tab:red", "D"))):
        xs = [x for x in rows if x["dc"] == dc]
        _errorbar(ax, [x["M"] * (1 + (j - 0.5) * 0.06) for x in xs],
                  [Interval.from_dict(x["ratio"]) for x in xs], color=color, marker=marker,
                  ls="-" if dc == "none" else "--", label=f"delay compensation: {dc}")
    ax.axhline(1.0, color="black", ls=":", label="AP(1)")
    ax.set_xscale("log", base=2)
    if Ms:
        ax.set_xticks(Ms, [str(m) for m in Ms])
    ax.set_xlabel("pipeline stages M (series offset by ±3%)")
    ax.set_ylabel("samples to target / AP(1)'s (ratio)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{s.dataset}: geometric mean and 95% CI, n = {s.seeds} seeds", fontsize=9)
    return {"beyond-staleness": _save(fig, out / "fig_beyond-staleness.png")}


def beyond_cost(a: dict, s: Settings, out: Path) -> dict[str, str]:
    rows = a.get("rows", [])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    dig = [x for x in rows if x.get("cycles")]
    labels = [f"{x['problem']}\nM = {x['M']}" for x in rows]
    for j, alg in enumerate(_ALG_STYLE):
        color = _ALG_STYLE[alg][0]
        axes[0].bar([i + (j - 0.5) * 0.38 for i in range(len(dig))],
                    [x["cycles"][alg] for x in dig], width=0.36, color=color, label=alg)
        ivs = [Interval.from_dict(x["wall"][alg]) for x in rows]
        axes[1].bar([i + (j - 0.5) * 0.38 for i in range(len(rows))],
                    [iv.mean for iv in ivs], width=0.36, color=color, label=alg,
                    yerr=[[_err(iv)[0] for iv in ivs], [_err(iv)[1] for iv in ivs]], capsize=3)
    axes[0].set_xticks(range(len(dig)), [f"digits\nM = {x['M']}" for x in dig])
    axes[0].set_ylabel("AIMC cycles per training sample (MVM times)")
    axes[1].set_xticks(range(len(rows)), labels)
    axes[1].set_ylabel("simulator time per sample (µs)")
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"What Tiki-Taka costs (time: mean and 95% CI, n = {s.seeds} seeds)")
    return {"beyond-cost": _save(fig, out / "fig_beyond-cost.png")}
