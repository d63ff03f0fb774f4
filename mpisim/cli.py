"""The ``mpisim`` command: one subcommand per ``python -m`` entry point, arguments passed through unchanged.

    mpiexec -n 3 mpisim server --agents.n 4      # = mpiexec -n 3 python -m mpisim.server_mode --agents.n 4
    mpisim plot results/run-a -o acc.png        # = python -m mpisim.plot results/run-a -o acc.png

Each subcommand imports its module and calls its ``main`` in this process,
as ``python -m`` does (the modes install their stop-signal handler when
imported, before their set-up). Only the chosen module is imported: the
help and the pure commands import no MPI.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

#: subcommand -> (the module whose ``main(argv)`` it runs, what it does)
COMMANDS = {
    "server": ("mpisim.server_mode", "server mode: D-SGD with a robust filter (under mpiexec)"),
    "decentralized": ("mpisim.decentralized", "decentralized mode: BRIDGE over a graph (under mpiexec)"),
    "one-round": ("mpisim.one_round", "Yin et al.'s robust one-round algorithm (under mpiexec)"),
    "sweep": ("mpisim.sweep", "a grid of runs from one TOML file: run, resume, merge, report worst cases"),
    "plot": ("mpisim.plot", "plot run directories into a PNG"),
    "fetch": ("mpisim.datasets.fetch", "download a data set's files and check their MD5s"),
    "testing": ("mpisim.testing", "check a rule (yours or a built-in) for the built-ins' properties"),
}


def usage() -> str:
    return "usage: mpisim COMMAND [ARGS ...]   (mpisim COMMAND --help: that command's options)"


def help_text() -> str:
    width = max(map(len, COMMANDS))
    lines = [usage(), "", "Each command is the same as python -m MODULE with the same arguments:", ""]
    for name, (module, summary) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {summary}  (python -m {module})")
    lines += ["", "Run the modes under mpiexec as their modules: mpiexec -n 3 mpisim server --agents.n 4"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``mpisim COMMAND ARGS``: the exit status of COMMAND's ``main(ARGS)``; 2 for a usage error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            print(f"{usage()}\nmpisim: error: a COMMAND is required: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        print(help_text())
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{usage()}\nmpisim: error: unknown command {command!r}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(args)


if __name__ == "__main__":
    sys.exit(main())
