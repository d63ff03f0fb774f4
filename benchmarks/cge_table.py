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
printed in Markdown for the README, and the curves are drawn in
benchmarks/results/cge_figures.png (test accuracy against the round, one
panel per fault, one curve per filter). ``--plot-only`` draws the figure
from the saved JSON without running any job.
"""

from __future__ import annotations

from common import RESULTS, curve_series, load_results, rule_by_fault_table, sweep_parser

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


DESCRIPTION = __doc__.split("\n\n")[0]
FIGURE = "cge_figures.png"


def plot(name: str = "cge_table.json") -> None:
    """CGE paper Figures 2-3 from the saved cells: accuracy against the round, a panel per fault."""
    from mpisim import plot as mplot

    cells = load_results(name)["cells"]
    rounds = sorted({c["settings"]["rounds"] for c in cells.values()})
    panels = [mplot.Panel("fault-free" if fault == "none" else f"fault: {fault}",
                          [curve_series(rule, cells[f"{rule}|{fault}"]["curve"]) for rule in FILTERS
                           if f"{rule}|{fault}" in cells], ylim=(0, 100))
              for fault in FAULTS]
    out = RESULTS / FIGURE
    mplot.draw_panels([p for p in panels if p.series], xlabel="round", ylabel="test accuracy (%)", out=out,
                      title=f"CGE paper Figures 2-3 setup: LeNet on MNIST, n = {N} agents, f = {F} faulty "
                            f"(agent 0), k = 16, step {STEP} (CGE: {STEP}/(n - f)), "
                            f"{'/'.join(map(str, rounds))} rounds",
                      legend_title="filter", ncols=3)
    print(f"figure: {out}")


def main() -> None:
    parser = sweep_parser(DESCRIPTION, n=N, default_rounds=500, only="rule")
    parser.add_argument("--plot-only", action="store_true",
                        help=f"only draw benchmarks/results/{FIGURE} from the saved JSON (runs no job)")
    args = parser.parse_args()
    if not args.plot_only:  # the sweep reads the same command line (it has no --plot-only)
        rule_by_fault_table("cge_table.py", "cge_table.json", DESCRIPTION,
                            rules=FILTERS, faults=FAULTS, n=N, f=F, step=STEP, default_rounds=500)
    plot()


if __name__ == "__main__":
    main()
