"""Graphs of the decentralized mode, pure bookkeeping with no MPI: Erdős–Rényi
graphs and their checks (:mod:`.topology`)."""
