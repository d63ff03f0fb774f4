"""mpisim: an MPI simulator, with real processes, of Byzantine-robust distributed learning.

Packages, from the bottom up: ``rules`` (robust rules, screening, faults),
``learning`` (models, tasks, step sizes), ``datasets`` and ``graphs`` are
pure and import no MPI; ``mpi`` is the only package that does; ``protocols``
(the driver, the server and decentralized modes, the state objects) sits on
top, and ``python -m mpisim.server_mode`` / ``mpisim.decentralized`` run it.
Importing ``mpisim`` imports no MPI.
"""

from . import config, datasets, metrics
from .learning import models, schedules, tasks
from .rules import aggregators, attacks, screening

__version__ = "0.1.0"

__all__ = ["aggregators", "attacks", "config", "datasets", "metrics", "models", "schedules", "screening",
           "tasks", "__version__"]
