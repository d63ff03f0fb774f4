"""Server mode: D-SGD with a robust gradient filter, one MPI process per role.

    mpiexec -n 11 python -m mpisim.server_mode [--config FILE] [--section.field VALUE ...]

Rank 0 is the parameter server, ranks 1.. host the agents; the protocol is
:mod:`mpisim.protocols.server`, run by :mod:`mpisim.protocols.driver`.
"""

import sys

from .protocols import driver
from .protocols.server import ServerMode

main = driver.entry_point(ServerMode)

if __name__ == "__main__":
    sys.exit(main())
