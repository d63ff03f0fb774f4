"""The learning problem, with no MPI: models over one flat buffer, tasks (what is
learned and measured), and step-size schedules. Data sets are in :mod:`mpisim.datasets`."""
