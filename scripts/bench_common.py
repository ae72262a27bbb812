"""What the benchmark scripts share: the device, the machine's description and load, tables."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripts run from a checkout without installing


def pick_device(requested: str, rank: int = 0) -> torch.device:
    """``cuda:rank`` for ``auto`` or ``cuda`` when a GPU is there, else the CPU."""
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", rank % torch.cuda.device_count())


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock time covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo"),
                    caches: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> str:
    """The CPU's model, usable cores and per-core L2 and L3 sizes as Linux reports them (what a
    memory-bound timing depends on: whether the working set fits), e.g. "Intel(R) Xeon(R)
    Processor, 2 cores, L2 2 MiB, L3 300 MiB"; the parts the system does not report are left out."""
    parts = [str(usable_cores()) + " cores"]
    models = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
              if line.startswith("model name")]
    for index in sorted(caches.glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        if level in ("2", "3") and kind != "Instruction" and size.endswith("K") and size[:-1].isdigit():
            kib = int(size[:-1])
            parts.append(f"L{level} {kib // 1024} MiB" if kib % 1024 == 0 else f"L{level} {kib} KiB")
    return ", ".join(models[:1] + parts)


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores' worth of CPU the machine used over the next ``seconds`` (from /proc/stat;
    the 1-minute load average where there is none)."""
    def idle_and_total() -> tuple[int, int]:
        counters = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return counters[3] + counters[4], sum(counters)
    if not Path("/proc/stat").exists():
        return os.getloadavg()[0]
    idle0, total0 = idle_and_total()
    time.sleep(seconds)
    idle1, total1 = idle_and_total()
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(1, total1 - total0))


def warn_if_busy() -> None:
    """Say so when other processes already load the CPU: timings taken then are not representative
    (a torch thread that loses its core stalls the others at every parallel region)."""
    busy = busy_cores()
    if busy > 0.25:
        print(f"warning: other processes keep {busy:.1f} of {os.cpu_count()} cores busy: timings will be "
              f"noisy (fewer --threads helps)", flush=True)


def format_table(header: list[str], cells: list[list[str]]) -> str:
    """A Markdown table (numbers right-aligned)."""
    widths = [max(len(h), *(len(row[k]) for row in cells)) for k, h in enumerate(header)]
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in cells)])


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]
