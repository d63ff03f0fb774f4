"""Decentralized mode: BRIDGE over an Erdős–Rényi graph, every rank hosting graph nodes.

    mpiexec -n 20 python -m mpisim.decentralized [--config FILE] [--section.field VALUE ...]

The protocol is :mod:`mpisim.protocols.decentralized`, run by
:mod:`mpisim.protocols.driver`.
"""

import sys

from . import signals

signals.catch()  # first: a stop signal during the imports and the set-up is kept, not fatal

from .protocols import driver  # noqa: E402
from .protocols.decentralized import Decentralized  # noqa: E402

main = driver.entry_point(Decentralized)

if __name__ == "__main__":
    sys.exit(main())
