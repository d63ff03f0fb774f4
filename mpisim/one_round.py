"""The robust one-round algorithm (Yin et al. 2018, Algorithm 2).

    mpiexec -n 11 python -m mpisim.one_round [--config FILE] [--section.field VALUE ...]

Rank 0 is the master, ranks 1.. host the workers; the protocol is
:mod:`mpisim.protocols.one_round`, run by :mod:`mpisim.protocols.driver`.
"""

import sys

from . import signals

signals.catch()  # first: a stop signal during the imports and the set-up is kept, not fatal

from .protocols import driver  # noqa: E402
from .protocols.one_round import OneRound  # noqa: E402

main = driver.entry_point(OneRound)

if __name__ == "__main__":
    sys.exit(main())
