"""Server mode: D-SGD with a robust gradient filter, one MPI process per role.

    mpiexec -n 11 python -m mpisim.server_mode [--config FILE] [--section.field VALUE ...]

Rank 0 is the parameter server, ranks 1.. host the agents; the protocol is
:mod:`mpisim.protocols.server`, run by :mod:`mpisim.protocols.driver`.
"""

import sys

from . import signals

signals.catch()  # first: a stop signal during the imports and the set-up is kept, not fatal

from .protocols import driver  # noqa: E402
from .protocols.server import ServerMode  # noqa: E402

main = driver.entry_point(ServerMode)

if __name__ == "__main__":
    sys.exit(main())
