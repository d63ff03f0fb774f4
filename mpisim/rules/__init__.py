"""Pure math of robustness: tensors in, tensors out, no MPI.

- :mod:`.aggregators`: the server's robust rules, (n, d) -> (d,);
- :mod:`.screening`: BRIDGE's screening of neighbours' models;
- :mod:`.attacks`: the faults of Byzantine agents and nodes.
"""
