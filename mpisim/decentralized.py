"""Decentralized mode: BRIDGE over an Erdős–Rényi graph, every rank hosting graph nodes.

    mpiexec -n 20 python -m mpisim.decentralized [--config FILE] [--section.field VALUE ...]

The protocol is :mod:`mpisim.protocols.decentralized`, run by
:mod:`mpisim.protocols.driver`.
"""

import sys

from .protocols import driver
from .protocols.decentralized import Decentralized

main = driver.entry_point(Decentralized)

if __name__ == "__main__":
    sys.exit(main())
