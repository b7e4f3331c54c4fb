"""The paper's experiment set: plan (paper), worker pool (runner), tables and verdicts
(report), figures (plots). `analogpipe reproduce` ties them together."""

from analogpipe.experiments.paper import RunSpec, Settings, full_settings, plan, quick_settings

__all__ = ["RunSpec", "Settings", "full_settings", "plan", "quick_settings"]
