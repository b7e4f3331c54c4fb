"""Test-wide settings: property-based tests draw the same examples on every run (CI included),
so a failure is reproducible; set HYPOTHESIS_PROFILE=explore to search with fresh examples."""

import os

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))
