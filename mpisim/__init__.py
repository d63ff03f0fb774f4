"""mpisim: an MPI simulator, with real processes, of Byzantine-robust distributed learning.

The pure modules (rules, faults, data, models, metrics) import no MPI; the
entry points ``python -m mpisim.server_mode`` and ``mpisim.comm`` do.
"""

from . import aggregators, attacks, config, data, metrics, models

__version__ = "0.1.0"

__all__ = ["aggregators", "attacks", "config", "data", "metrics", "models", "__version__"]
