"""Time the rules of whichever mpisim is on PYTHONPATH, for comparing two commits in one session.

    PYTHONPATH=CLONE_OF_OLD python benchmarks/rules_at_commit.py > old_1.json
    PYTHONPATH=CLONE_OF_NEW python benchmarks/rules_at_commit.py > new_1.json   # then old 2, new 2, ...

One thread; n = 10 and 100 rows of d = 431,080 (LeNet), f = floor((n - 1) / 4)
(bulyan: floor((n - 3) / 4)); the median of 5 calls after a warm-up. Prints
one JSON object, {"<rule> <n>x<d>": ms}. The alternated runs of issue 12 are
in benchmarks/results/rules_before_after.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

RULES = ("mean", "cge", "cwtm", "median", "meamed", "krum", "multikrum", "geomed", "bulyan",
         "norm_threshold", "cc")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    from mpisim.rules import aggregators as A

    torch.set_num_threads(1)
    out = {}
    for n, d in ((10, 431_080), (100, 431_080)):
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(n))
        for rule in RULES:
            f = (n - 3) // 4 if rule == "bulyan" else (n - 1) // 4
            call = lambda: A.REGISTRY[rule](x, f=f)  # noqa: E731
            call()
            times = []
            for _ in range(5):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            out[f"{rule} {n}x{d}"] = 1e3 * statistics.median(times)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
