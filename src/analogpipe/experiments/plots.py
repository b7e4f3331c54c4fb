"""Figures of the report, drawn from results.csv only (matplotlib, Agg backend).

Plots never train or touch run folders: rebuilding the figures needs nothing but the CSV
(and convergence.csv for the optional convergence check).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analogpipe.experiments.paper import Settings  # noqa: E402

COLORS = {"digital": "black", "wop": "tab:blue", "sp": "tab:orange", "ap": "tab:green"}
LABELS = {"digital": "digital SGD", "wop": "analog WOP", "sp": "analog SP", "ap": "analog AP"}


def _save(fig: Any, path: Path) -> None:
    """PNG via a buffer, then an atomic replace."""
    from analogpipe.experiments.report import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _band(ax: Any, x: list[float], stats: list[Any], scheme: str, label: str) -> None:
    mean = [st.mean for st in stats]
    ax.plot(x, mean, marker="o", ms=3, color=COLORS.get(scheme), label=label)
    if any(st.n > 1 for st in stats):
        ax.fill_between(x, [st.mean - st.std for st in stats],
                        [st.mean + st.std for st in stats], color=COLORS.get(scheme), alpha=0.2)


def make_figures(results_csv: str | Path, out: str | Path, s: Settings,
                 conv: dict[str, Any] | None = None) -> dict[str, str]:
    """Write the PNGs next to the report; returns {figure key: relative path}."""
    from analogpipe.experiments.report import analyse, read_results

    out = Path(out)
    rows = read_results(results_csv)
    a = analyse(rows, s)
    figs: dict[str, str] = {}
    n = s.seeds
    M = s.acc_stages

    if a["acc"]:
        for key, xkey, xlabel in (("acc_epoch", "epoch", "epoch"),
                                  ("acc_cycles", "cycles", "clock cycles (t_f = t_b = 1/M)")):
            fig, ax = plt.subplots(figsize=(6, 4))
            for scheme, d in a["acc"].items():
                c = d["curve"]
                _band(ax, [p[xkey] for p in c], [p["acc"] for p in c], scheme,
                      f"{LABELS[scheme]}" + ("" if scheme == "digital" else f" (M={M})"))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{s.dataset}: mean ± std over n={n} seeds")
            ax.grid(alpha=0.3)
            ax.legend()
            name = f"fig_{key}.png"
            _save(fig, out / name)
            figs[key] = name

    sp = a["speedup"]
    if sp["rows"]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        ax = axes[0]
        Ms = sorted({r["M"] for r in sp["rows"]})
        ax.plot(Ms, Ms, ls=":", color="gray", label="ideal (= M)")
        for scheme in ("sp", "ap"):
            rs = [r for r in sp["rows"] if r["scheme"] == scheme]
            if not rs:
                continue
            xs = [r["M"] for r in rs]
            ax.errorbar(xs, [r["speedup"].mean for r in rs], yerr=[r["speedup"].std for r in rs],
                        marker="o", capsize=3, color=COLORS[scheme],
                        label=f"{LABELS[scheme]} measured")
            ax.plot(xs, [r["cf_speedup"] for r in rs], ls="--", color=COLORS[scheme],
                    label=f"{LABELS[scheme]} closed form")
        ax.set_xlabel("stages M")
        ax.set_ylabel(f"speedup over WOP in cycles to {sp['target']:.0%}")
        ax.set_xticks(Ms)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1]
        for scheme in ("sp", "ap"):
            rs = [r for r in sp["rows"] if r["scheme"] == scheme]
            if rs:
                ax.errorbar([r["M"] for r in rs], [r["samples"].mean for r in rs],
                            yerr=[r["samples"].std for r in rs], marker="o", capsize=3,
                            color=COLORS[scheme], label=LABELS[scheme])
        if sp["wop_samples"].n:
            ax.axhline(sp["wop_samples"].mean, color=COLORS["wop"], ls="--", label="analog WOP")
        ax.set_xlabel("stages M")
        ax.set_ylabel(f"samples to {sp['target']:.0%}")
        ax.set_xticks(Ms)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(f"{s.dataset}: mean ± std over n={n} seeds")
        _save(fig, out / "fig_speedup.png")
        figs["speedup"] = "fig_speedup.png"

    tau_rows = a["tau"]
    if tau_rows:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for scheme in ("wop", "ap"):
            rs = sorted((r for r in tau_rows if r["scheme"] == scheme), key=lambda r: r["tau"])
            if not rs:
                continue
            xs = [r["tau"] for r in rs]
            axes[0].errorbar(xs, [r["final"].mean for r in rs],
                             yerr=[r["final"].std for r in rs], marker="o", capsize=3,
                             color=COLORS[scheme], label=f"{LABELS[scheme]} (M={M})")
            axes[1].errorbar(xs, [r["sat_mean"].mean for r in rs],
                             yerr=[r["sat_mean"].std for r in rs], marker="o", capsize=3,
                             color=COLORS[scheme], label=f"{LABELS[scheme]} mean")
            axes[1].errorbar(xs, [r["sat_max"].mean for r in rs],
                             yerr=[r["sat_max"].std for r in rs], marker="s", capsize=3, ls="--",
                             color=COLORS[scheme], label=f"{LABELS[scheme]} max")
        dig = [r for r in tau_rows if r["scheme"] == "digital" and r["final"].n]
        if dig:
            axes[0].axhline(dig[0]["final"].mean, color="black", ls="--",
                            label="digital SGD (tau = inf)")
        for ax, ylabel in ((axes[0], "final test accuracy"), (axes[1], "saturation |w| / tau")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("tau")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{s.dataset}: mean ± std over n={n} seeds")
        _save(fig, out / "fig_tau.png")
        figs["tau"] = "fig_tau.png"

    if conv is not None and conv.get("curves"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for tau, (ks, ek) in sorted(conv["curves"].items(), key=lambda kv: float(kv[0])):
            ax.loglog(ks, ek, label=f"tau {float(tau):g}")
        ks = conv["curves"][next(iter(conv["curves"]))][0]
        ref = conv["curves"][next(iter(conv["curves"]))][1]
        if ks and ref:
            c0 = ref[0] * math.sqrt(ks[0])
            ax.loglog(ks, [c0 / math.sqrt(k) for k in ks], ls=":", color="gray",
                      label="1/sqrt(K)")
        ax.set_xlabel("K (updates)")
        ax.set_ylabel("E_K = mean_k ||grad f(W_k)||^2")
        ax.set_title("teacher-student regression, analog SGD")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        _save(fig, out / "fig_convergence.png")
        figs["convergence"] = "fig_convergence.png"
    return figs
