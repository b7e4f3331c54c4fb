"""report.md from the analysis data alone (``analysis.json``): no training, no statistics.

``render`` lays out what was run (command line, version, commit, torch, machine, wall time),
the rules fixed before the runs, one line per verdict (claim, verdict, rule, numbers,
confounds), then each group's own section (its ``render`` function) and the files.
"""

from __future__ import annotations

from typing import Any

from analogpipe.experiments.plan import Group, Settings


def _header(h: dict[str, Any], s: Settings) -> list[str]:
    v = h.get("versions", {})
    m = h.get("machine", {})
    return [
        "## What was run", "",
        f"- Command: `{h.get('command', '?')}`",
        f"- analogpipe {v.get('analogpipe', '?')}, git commit `{h.get('git_commit') or 'unknown'}`"
        f", torch {v.get('torch', '?')}, Python {v.get('python', '?')}",
        f"- Machine: {m.get('platform', '?')}, {m.get('cpu_count', '?')} CPU cores, "
        f"{h.get('workers', '?')} worker process(es), device `{s.device}`",
        f"- Wall time {h.get('wall_s', float('nan')):.0f} s up to this report (CPU "
        f"{h.get('cpu_s', float('nan')):.0f} s over the process tree); "
        f"{h.get('trained', '?')} runs trained, {h.get('reused', '?')} reused from an earlier "
        f"invocation, {h.get('failed', 0)} failed.",
        f"- Mode {'quick' if s.quick else 'full'}: `{s.dataset}`, model `{s.model}`"
        + (f" (depth {s.depth}, width {s.width})" if s.depth else "")
        + (f"; pipeline claims use `{s.pipe_model}`" if s.pipe_model != s.model else "")
        + f", init `{s.init}`; {s.epochs} epochs, lr {s.lr:g} (x0.1 at epochs "
        f"{list(s.lr_milestones) or 'none'}), mini-batch B x b = {s.microbatches} x "
        f"{s.micro_batch_size}; soft-bounds device tau {s.tau:g} mapped at omega = tau/2 "
        f"(except the tau sweep), 8-bit IO, 0.5% output noise, learned output scaling, "
        f"expected update per sample; stages partitioned by AIMC cost.",
        f"- Seeds: n = {s.seeds} per cell (seeds 0..{s.seeds - 1}). A seed fixes the data "
        f"split, the initial weights, the micro-batch order and every noise stream; every "
        f"scheme sees the same ones, so comparisons are paired by seed."
        + (" Evaluation data: stratified 5-fold cross-validation of the 1797 digits: seed s "
           "tests on fold s mod 5 (359 or 360 images) and trains on the other four, so seeds "
           "0..4 evaluate every image exactly once (further seeds use another partition)."
           if s.dataset == "digits" else
           " Evaluation data: the full 10000-image test set."),
        "- Statistics: mean with a two-sided 95% Student-t interval over seeds (scipy.stats); "
        "differences are paired by seed; ratios are geometric means with the t interval of "
        "the mean log ratio. A diverged run counts as chance accuracy, never reaches a "
        "target, and is counted in every table. Intervals are clipped to the feasible range "
        "for display (accuracy 0-100 %, sample and cycle counts >= 0); analysis.json keeps "
        "the unclipped t intervals.", ""]


def _rules(s: Settings) -> list[str]:
    r = s.rules
    return [
        "## Rules fixed before the runs", "",
        f"- Target accuracy = {r.target_fraction:g} x the mean final test accuracy of digital "
        f"SGD in this reproduction (same model, same seeds).",
        f"- Equivalence of accuracies: the 95% CI of the paired difference lies within "
        f"±{r.acc_margin:g} ({r.acc_margin * 100:g} points) -> supported; entirely outside -> "
        f"not supported; straddling a margin (or n < 2) -> inconclusive.",
        f"- Samples-to-target equivalence: CI of the ratio within [1/{r.samples_ratio:g}, "
        f"{r.samples_ratio:g}].",
        f"- Near-linear speedup: CI of measured / ideal speedup >= {r.near_linear:g} "
        f"(entirely below -> not supported).",
        f"- Floor shape: every tau within a factor {r.floor_factor:g} of the one-constant fit. "
        f"Rate: CI of the E_K slope <= {r.rate_slope:g}. Trends: Spearman p < {r.trend_p:g}.",
        f"- Beyond the paper: a floor grows when the whole CI of its paired change from the "
        f"ideal device to the smallest tau lies on the worse side (teacher MSE ratio > 1, "
        f"accuracy difference < 0); it does not grow when that CI lies within [1/"
        f"{r.floor_ratio:g}, {r.floor_ratio:g}] (teacher MSE ratio) or ±{r.acc_margin:g} "
        f"(accuracy). PipeMare helps when the CI of its paired samples-to-target ratio to no "
        f"compensation lies below 1.",
        "- A claim made of several cells is not supported if any cell is not, supported if "
        "all are, inconclusive otherwise.", ""]


def render(header: dict[str, Any], s: Settings, groups: list[Group],
           analyses: dict[str, dict[str, Any]], figures: dict[str, dict[str, str]]) -> str:
    """The whole report as markdown text."""
    L = ["# analogpipe reproduce: pipeline analog training (Wu et al., arXiv 2410.15155)", ""]
    L += _header(header, s)
    L += _rules(s)
    L += ["## Verdicts", "",
          "One line per claim: verdict, the rule, the numbers (95% CIs in brackets), confounds.",
          ""]
    for g in groups:
        for v in analyses.get(g.key, {}).get("verdicts", []):
            L.append(f"- **{v['verdict']}**: {v['claim']}. Rule: {v['rule']}. Numbers: "
                     f"{v['numbers']}. Confounds: {v['confounds']}. "
                     f"(section {g.title.split('.')[0]})")
    L.append("")
    for g in groups:
        L += [f"## {g.title}", ""]
        L += g.render(analyses.get(g.key, {}), s, figures.get(g.key, {}))
    L += ["## Files", "",
          "- `results.csv`: one row per run and evaluated epoch (resolved settings, accuracy, "
          "loss, samples, balanced-clock cycles, saturation).",
          "- `analysis.json`: every number of this report; `measurements.json`: the in-process "
          "measurements (pulse-train lengths, teacher problem).",
          "- `runs/<name>-<settings hash>/`: each run's run.json (resolved settings, partition), "
          "metrics.jsonl, checkpoint.pt, reproduce.json.",
          "- Method and theory: `docs/reproduction.md` of the analogpipe repository.", ""]
    return "\n".join(L)
