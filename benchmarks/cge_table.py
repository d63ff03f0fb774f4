"""Every filter under every fault: the CGE paper's MNIST experiment (Figures 2 and 3).

    python benchmarks/cge_table.py [--rounds 500] [--per-rank 5] [--only cge,mean]

Setup of the CGE paper, Sections 3.1-3.4: LeNet on MNIST (d = 431,080),
n = 10 agents, batch k = 16, f = 1 faulty agent (agent 1 of the paper, id 0
here), step 0.1 for every filter, the faulty agent running each of the five
fault types, plus the fault-free run. Filters: plain mean (D-SGD), CGE,
geometric median, median of means, coordinate-wise trimmed mean, multi-Krum
with m = 2.

CGE's eq (7) sums the n - f kept gradients while the other filters average,
so at the common step 0.1 CGE would move 9 times further (it diverges on
LeNet: see the README). The paper's curves at step 0.1 match the average of
the kept gradients, which is CGE at step 0.1 / (n - f): that is what this
table runs.

Results are kept in benchmarks/results/cge_table.json, one cell at a time
(a rerun skips the cells already there, unless --fresh); the table is
printed in Markdown for the README.
"""

from __future__ import annotations

from common import rule_by_fault_table

N, F, STEP = 10, 1, 0.1

FILTERS = {  # column label -> extra arguments
    "mean": ["--aggregator.name", "mean"],
    "cge": ["--aggregator.name", "cge", "--optim.lr", str(STEP / (N - F))],
    "geomed": ["--aggregator.name", "geomed"],
    "mom": ["--aggregator.name", "mom"],
    "cwtm": ["--aggregator.name", "cwtm"],
    "multikrum (m=2)": ["--aggregator.name", "multikrum", "--aggregator.params.m", "2"],
}
FAULTS = ["none", "gradient_reverse", "coordinate_wise", "norm_confusing", "label_flip", "random"]


def main() -> None:
    rule_by_fault_table("cge_table.py", "cge_table.json", __doc__.split("\n\n")[0],
                        rules=FILTERS, faults=FAULTS, n=N, f=F, step=STEP, default_rounds=500)


if __name__ == "__main__":
    main()
