"""What writing the metrics log costs as a run grows: seconds to log N lines through RunLog.log.

    python benchmarks/bench_runlog.py [--lines 1000,5000,10000]

Each line is a server-mode record (round, time, losses, accuracy, six byte
counters), appended and made durable (fdatasync) one at a time. The log
used to be rewritten whole at every line, which made N lines cost O(N^2):
1,000 lines 6.3 s, 5,000 lines 148 s, 10,000 lines 603 s on this machine.
Saves benchmarks/results/runlog.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import machine, markdown_table, save_json
from mpisim import metrics


def record(t: int) -> dict:
    return {"round": t, "time": 0.05 * t, "train_loss": 0.1234567, "test_loss": 0.2345678,
            "test_accuracy": 0.9712, "bytes": {k: 1_724_320 * t for k in (
                "server_sent", "server_received", "agents_sent", "agents_received",
                "adversary_sent", "adversary_received")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", default="1000,5000,10000")
    args = parser.parse_args()
    rows = []
    for count in (int(c) for c in args.lines.split(",")):
        with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
            log = metrics.RunLog(Path(tmp) / "run", "")
            start = time.perf_counter()
            for t in range(count):
                log.log(record(t))
            seconds = time.perf_counter() - start
            log.close()
            assert len(metrics.read_jsonl(Path(tmp) / "run" / "metrics.jsonl")) == count
        rows.append({"lines": count, "seconds": seconds, "ms_per_line": 1e3 * seconds / count})
        print(f"  {count} lines: {seconds:.2f} s", flush=True)
    table = markdown_table(["lines", "seconds", "ms per line"],
                           [[r["lines"], f"{r['seconds']:.2f}", f"{r['ms_per_line']:.3f}"] for r in rows])
    print(table)
    saved = save_json("runlog.json", {"benchmark": __doc__.split("\n")[0],
                                      "command": "python benchmarks/bench_runlog.py --lines " + args.lines,
                                      "machine": machine(), "results": rows, "table": table})
    print(f"saved {saved}")


if __name__ == "__main__":
    main()
