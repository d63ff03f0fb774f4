"""The MPI layer: the only package that imports mpi4py.

- :mod:`.comm`: abort-on-error, buffer collectives with sleeping waits and byte
  counters, the neighbourhood exchange, small control messages;
- :mod:`.watchdog`: ``run.round_timeout``, heartbeats to rank 0 and an abort that names
  the ranks and hosts that stopped answering;
- :mod:`.launcher`: start ``mpiexec -n K python ...`` jobs from Python (tests,
  benchmarks, sweeps), with a timeout that kills the whole job.
"""
