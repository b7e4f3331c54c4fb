"""The reproduction of the paper's claims: the plan and rules (plan), the groups that
isolate each claim (paper), the worker pool (runner), the AIMC clock (clock), the teacher
problem (convergence), statistics (stats), analysis, figures (plots) and report.md (render,
report). `analogpipe reproduce` ties them together."""

from analogpipe.experiments.plan import (
    GROUPS,
    Group,
    Rules,
    RunSpec,
    Settings,
    full_settings,
    plan,
    quick_settings,
    register,
)

__all__ = ["GROUPS", "Group", "Rules", "RunSpec", "Settings", "full_settings", "plan",
           "quick_settings", "register"]
