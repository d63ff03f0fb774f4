"""The MPI layer: the only package that imports mpi4py.

- :mod:`.comm`: abort-on-error, buffer collectives with sleeping waits and byte
  counters, the neighbourhood exchange, small control messages;
- :mod:`.launcher`: start ``mpiexec -n K python ...`` jobs from Python (tests,
  benchmarks, sweeps), with a timeout that kills the whole job.
"""
