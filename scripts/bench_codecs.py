"""Encode+decode throughput of every message codec, as a ratio to a plain copy of the same tensor.

    python scripts/bench_codecs.py [--sizes 1e6,1e7,1e8] [--quick] [--repeats R] [--device auto] [--json OUT]

For each size and codec, one repetition times a plain ``copy_`` of the fp32 vector, its ``encode``
and the ``decode`` of the result (each call repeated for at least ``--min-time`` seconds), encode and
decode writing into preallocated buffers through ``out=`` as the algorithms do; the ratio
``copy / (encode + decode)`` is the codec's throughput as a fraction of copy throughput (1 = as fast
as a copy). Every column is the median over the repetitions. Inputs are uniform in [−½, ½) (what
Moniqua's quantiser expects; the other codecs do not care). Randomised codecs get a freshly seeded
generator for each call, as the algorithms do. The table marks whether a ratio reaches 0.5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench_common import (cpu_description, format_table, parse_list, pick_device,  # scripts/ is on sys.path
                          synchronize, warn_if_busy)

from gossip.algorithms import compression

#: The codecs measured, by label.
CODECS: dict[str, compression.Codec] = {
    "identity": compression.build("identity"),
    "topk 1%": compression.build("topk", fraction=0.01),
    "randomk 1%": compression.build("randomk", fraction=0.01),
    "sign": compression.build("sign"),
    "qsgd s=7": compression.build("qsgd", levels=7),
    "moniqua 2-bit": compression.Moniqua(bits=2),
}
TARGET_RATIO = 0.5


def seconds_per_call(call: Callable[[], Any], device: torch.device, min_time: float) -> float:
    """Mean wall time of ``call`` over as many calls as fit in ``min_time`` (at least one), after
    one untimed call."""
    call()
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def fresh_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


def time_codec(codec: compression.Codec, values: torch.Tensor, min_time: float) -> dict[str, float]:
    """One repetition: seconds per copy, per encode and per decode of ``values``, each writing into a
    preallocated output (``out=``), as the algorithms' packed send and receive buffers do."""
    device = values.device
    target = torch.empty_like(values)
    wire = torch.empty(codec.wire_bytes(values.numel()), dtype=torch.uint8, device=device)
    encode_gen = (lambda: fresh_generator(device)) if codec.encode_needs_generator else (lambda: None)
    decode_gen = (lambda: fresh_generator(device)) if codec.decode_needs_generator else (lambda: None)
    codec.encode(values, encode_gen(), out=wire)
    return {"copy_s": seconds_per_call(lambda: target.copy_(values), device, min_time),
            "encode_s": seconds_per_call(lambda: codec.encode(values, encode_gen(), out=wire), device, min_time),
            "decode_s": seconds_per_call(lambda: codec.decode(wire, values, decode_gen(), out=target), device,
                                         min_time)}


def measure(label: str, elements: int, repeats: int, min_time: float, device: torch.device) -> dict[str, Any]:
    """The row of one codec at one size: median times over ``repeats`` and the throughput ratio."""
    codec = CODECS[label]
    values = torch.rand(elements, generator=torch.Generator().manual_seed(0)).sub_(0.5).to(device)
    runs = [time_codec(codec, values, min_time) for _ in range(repeats)]
    times = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    ratio = statistics.median(run["copy_s"] / (run["encode_s"] + run["decode_s"]) for run in runs)
    return {"codec": label, "elements": elements, "device": device.type, **times, "ratio_to_copy": ratio,
            "wire_bytes": codec.wire_bytes(elements), "compression": 4 * elements / codec.wire_bytes(elements)}


def codec_table(rows: list[dict[str, Any]]) -> str:
    cells = [[r["codec"], f"{r['elements']:,}", f"{1e3 * r['copy_s']:.3f}", f"{1e3 * r['encode_s']:.3f}",
              f"{1e3 * r['decode_s']:.3f}", f"{r['ratio_to_copy']:.3f}", f"{r['compression']:.1f}×",
              "met" if r["ratio_to_copy"] >= TARGET_RATIO else "missed"] for r in rows]
    return format_table(["codec", "elements", "copy ms", "encode ms", "decode ms", "copy/(enc+dec)",
                         "compression", f"≥ {TARGET_RATIO}"], cells)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None, help="comma-separated element counts (default 1e6,1e7,1e8; quick 1e6,1e7)")
    parser.add_argument("--codecs", default=",".join(CODECS), help="comma-separated labels (default: all)")
    parser.add_argument("--quick", action="store_true", help="sizes 1e6 and 1e7 only")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; the median is reported")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds each timed call is repeated for")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="cuda when present (auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as a JSON list here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = [int(float(s)) for s in parse_list(args.sizes or ("1e6,1e7" if args.quick else "1e6,1e7,1e8"))]
    unknown = [label for label in parse_list(args.codecs) if label not in CODECS]
    if unknown:
        sys.exit(f"error: unknown codec label(s) {unknown}; known: {', '.join(CODECS)}")
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    warn_if_busy()
    rows = []
    for elements in sizes:
        for label in parse_list(args.codecs):
            rows.append(measure(label, elements, args.repeats, args.min_time, device))
            print(f"  {label:<14} {elements:>12,} elements: {rows[-1]['ratio_to_copy']:.3f} of copy throughput",
                  flush=True)
    print()
    print(codec_table(rows))
    print(f"\ntorch {torch.__version__}, device {device.type}, {torch.get_num_threads()} threads; {cpu_description()}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
