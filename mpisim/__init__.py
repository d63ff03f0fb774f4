"""mpisim: an MPI simulator, with real processes, of Byzantine-robust distributed learning.

The pure modules (rules, faults, data, models, metrics) import no MPI; the
entry points ``python -m mpisim.server_mode`` and ``mpisim.mpi.comm`` do.
"""

from . import config, datasets, metrics
from .learning import models
from .rules import aggregators, attacks, screening

__version__ = "0.1.0"

__all__ = ["aggregators", "attacks", "config", "datasets", "metrics", "models", "screening", "__version__"]
