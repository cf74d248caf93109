from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# A fast profile for every run; LPLD_HYPOTHESIS_PROFILE=thorough for a longer search.
settings.register_profile(
    "default", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "thorough", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("LPLD_HYPOTHESIS_PROFILE", "default"))
