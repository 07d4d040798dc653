import os

from hypothesis import HealthCheck, settings

# One profile for the whole suite: jitted kernels pay compile on first call, and the
# suite must stay well under 20 minutes on a 2-core machine.
settings.register_profile(
    "npdiff",
    deadline=None,
    max_examples=int(os.environ.get("NPDIFF_HYPOTHESIS_EXAMPLES", "20")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("npdiff")
