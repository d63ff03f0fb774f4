"""Every rule against the strongest attacks in server mode: n = 10 agents, f = 2 faulty.

    python benchmarks/attack_table.py [--rounds 300] [--per-rank 5] [--only cge,cwtm]

LeNet on MNIST (d = 431,080), k = 16, agents 0 and 1 faulty, every rule set
to tolerate f = 2, step 0.1 on the mean scale (the rules that sum, cge, run
at 0.1 / (n - f)). Attacks: none, sign flipping, random Gaussian (std 200),
label flipping, ALIE, IPM (epsilon 0.1), mimic, and NaN messages. Bulyan is
left out: it needs n >= 4f + 3 = 11.

Results are kept in benchmarks/results/attack_table.json, one cell at a
time (a rerun skips the cells already there, unless --fresh); the table is
printed in Markdown for the README.
"""

from __future__ import annotations

from common import rule_by_fault_table

N, F, STEP = 10, 2, 0.1

RULES = {  # column label -> extra arguments
    "mean": ["--aggregator.name", "mean"],
    "cge": ["--aggregator.name", "cge", "--optim.lr", str(STEP / (N - F))],
    "cwtm": ["--aggregator.name", "cwtm"],
    "median": ["--aggregator.name", "median"],
    "meamed": ["--aggregator.name", "meamed"],
    "geomed": ["--aggregator.name", "geomed"],
    "mom": ["--aggregator.name", "mom"],
    "krum": ["--aggregator.name", "krum"],
    "multikrum": ["--aggregator.name", "multikrum"],
    "norm_threshold": ["--aggregator.name", "norm_threshold"],
    "cc": ["--aggregator.name", "cc"],
    "nnm+cwtm": ["--aggregator.name", "cwtm", "--aggregator.pre", "nnm"],
}
ATTACKS = ["none", "sign_flip", "random", "label_flip", "alie", "ipm", "mimic", "nan"]


def main() -> None:
    rule_by_fault_table("attack_table.py", "attack_table.json", __doc__.split("\n\n")[0],
                        rules=RULES, faults=ATTACKS, n=N, f=F, step=STEP, default_rounds=300)


if __name__ == "__main__":
    main()
