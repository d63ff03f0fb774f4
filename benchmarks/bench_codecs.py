"""Time every codec of mpisim.compression on one CPU thread: encode, decode, payload size.

    .venv/bin/python benchmarks/bench_codecs.py            # d = 431,080 and 10^6
    .venv/bin/python benchmarks/bench_codecs.py --quick    # d = 10^4, 5 repetitions

Codecs: none, sign, scaled_sign, topk (ratio 0.01), qsgd with s = 1 and
s = 15, and scaled_sign with the side norm ||x||_2 in front (Ghosh et al.,
Algorithm 1). d = 431,080 is the gradient of the CGE paper's LeNet on MNIST.
The input is one float32 standard-normal vector (torch.randn, seeded by d);
every time is the median of --reps calls of ``encode(x, rng=...)`` and of
``decode(payload, d)`` after one warm-up call each. The ratio is 4d over
the payload bytes; the error is ||Q(x) - x|| / ||x|| of the decoded vector
(sqrt(1 - delta) of Definition 4 for this x).

Targets at d = 431,080, on encode + decode: under 1 ms for the sign family
(sign, scaled_sign and scaled_sign with its side norm), under 5 ms for every
codec. Prints a Markdown table and writes benchmarks/results/codecs.json
(codecs_quick.json for --quick) with the machine it was made on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine, markdown_table, save_json  # noqa: E402
from mpisim import compression as C  # noqa: E402

LENET_D = 431_080
FULL_D = (LENET_D, 1_000_000)
QUICK_D = (10_000,)
SIGN_FAMILY = ("sign", "scaled_sign", "scaled_sign+norm2")
TARGET_MS = {"sign family": 1.0, "every codec": 5.0}


def codecs() -> list[tuple[str, C.Codec]]:
    """(label, codec) of every benchmarked setting."""
    return [
        ("none", C.REGISTRY["none"]()),
        ("sign", C.REGISTRY["sign"]()),
        ("scaled_sign", C.REGISTRY["scaled_sign"]()),
        ("topk ratio=0.01", C.REGISTRY["topk"](ratio=0.01)),
        ("qsgd s=1", C.REGISTRY["qsgd"](s=1)),
        ("qsgd s=15", C.REGISTRY["qsgd"](s=15)),
        ("scaled_sign+norm2", C.with_side_norm(C.REGISTRY["scaled_sign"](), 2)),
    ]


def median_ms(fn, reps: int) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` in ms over ``reps`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="d = 10^4 only, 5 repetitions (a smoke run)")
    ap.add_argument("--reps", type=int, default=50, help="timed calls per measurement (default 50)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps must be >= 1, got {args.reps}")

    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    if load > 1.0:
        print(f"warning: load average {load:.2f} at start; other processes will inflate the "
              f"times (this benchmark uses one core)", file=sys.stderr)
    ds, reps = (QUICK_D, 5) if args.quick else (FULL_D, args.reps)
    made_on = {**machine(), "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
               "load_average_at_start": os.getloadavg()}

    rows = []
    for d in ds:
        x = torch.randn(d, generator=torch.Generator().manual_seed(d))
        for label, codec in codecs():
            rng = torch.Generator().manual_seed(0) if codec.stochastic else None
            payload = codec.encode(x, rng=rng)
            decoded = codec.decode(payload, d)
            enc_ms, enc_times = median_ms(lambda: codec.encode(x, rng=rng), reps)
            dec_ms, dec_times = median_ms(lambda: codec.decode(payload, d), reps)
            row = {
                "codec": label, "name": codec.name, "d": d, "payload_bytes": int(payload.size),
                "ratio": 4 * d / payload.size,
                "relative_error": float(torch.linalg.vector_norm((decoded - x).double())
                                        / torch.linalg.vector_norm(x.double())),
                "encode_ms": enc_ms, "decode_ms": dec_ms, "total_ms": enc_ms + dec_ms,
                "encode_times_ms": [round(v, 4) for v in enc_times],
                "decode_times_ms": [round(v, 4) for v in dec_times],
            }
            if d == LENET_D:
                limit = TARGET_MS["sign family"] if label in SIGN_FAMILY else TARGET_MS["every codec"]
                row["target_ms"] = limit
                row["target_met"] = row["total_ms"] < limit
            rows.append(row)
            print(f"  {label:<20} d={d:<9} encode {enc_ms:7.3f} ms  decode {dec_ms:7.3f} ms", flush=True)

    def flag(r):
        if "target_ms" not in r:
            return "-"
        return f"{'met' if r['target_met'] else 'MISSED'} (< {r['target_ms']:g} ms)"

    table = markdown_table(
        ["codec", "d", "bytes", "ratio", "rel. error", "encode ms", "decode ms", "total ms", "target"],
        [[r["codec"], f"{r['d']:,}", f"{r['payload_bytes']:,}", f"{r['ratio']:.1f}",
          f"{r['relative_error']:.3f}", f"{r['encode_ms']:.3f}", f"{r['decode_ms']:.3f}",
          f"{r['total_ms']:.3f}", flag(r)] for r in rows])
    print(f"\nmedian of {reps} calls, one thread, float32 standard-normal input:\n")
    print(table)
    held = [r for r in rows if "target_met" in r]
    if held:
        missed = [r["codec"] for r in held if not r["target_met"]]
        verdict = "all met" if not missed else f"missed by {', '.join(missed)}"
        print(f"\ntargets at d = {LENET_D:,}: {verdict}")

    command = " ".join(["python benchmarks/bench_codecs.py"]
                       + (list(argv) if argv is not None else sys.argv[1:]))
    path = save_json("codecs_quick.json" if args.quick else "codecs.json", {
        "benchmark": "mpisim.compression encode / decode time per call",
        "command": command,
        "made_on": [{**made_on, "load_average_at_end": os.getloadavg()}],
        "data": "one float32 standard-normal vector per d, torch.randn seeded by d",
        "timing": f"median of {reps} calls after one warm-up call, torch.set_num_threads(1)",
        "targets": {"d": LENET_D, "on": "encode_ms + decode_ms",
                    "sign family": {"codecs": list(SIGN_FAMILY), "ms": TARGET_MS["sign family"]},
                    "every codec": {"ms": TARGET_MS["every codec"]}},
        "results": rows,
        "table": table,
    })
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
