"""A sweep's tables: each run's final and best metrics (``results.csv``) and their mean ± std over
seeds per configuration, optionally tuned over one key (``summary.md``).

``results.csv`` has one row per run; its columns are ``label``, every swept key (in the sweep's
order), ``seed``, then ``status``, ``step``, the metric columns, ``bytes_per_worker``,
``wall_s``, ``run_dir`` and ``error``. A metric ``m`` that the runs logged gives ``final_m`` (the
last record) and, except for ``train_loss`` and ``consensus_distance``, ``best_m`` (the best
record). Better means higher for a metric whose name contains ``accuracy`` and lower for every
other (losses, perplexity).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from gossip.sweep.sweepfile import Run, format_value

METRICS = ("eval_loss", "eval_perplexity", "eval_accuracy", "local_eval_loss_mean", "local_eval_perplexity_mean",
           "local_eval_accuracy_mean", "train_loss", "consensus_distance")
FINAL_ONLY = ("train_loss", "consensus_distance")
SUMMARY_METRICS = ("final_eval_loss", "best_eval_loss", "final_eval_perplexity", "final_eval_accuracy",
                   "final_local_eval_loss_mean", "final_consensus_distance", "bytes_per_worker", "wall_s")


@dataclass
class RunResult:
    """What a run left behind: its status (done, failed, incomplete, not run) and measurements."""

    run: Run
    run_dir: Path
    status: str
    records: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float | None = None
    error: str = ""

    def metrics(self) -> dict[str, float]:
        """``final_m`` and ``best_m`` of every metric logged, the last step and bytes per worker."""
        if not self.records:
            return {}
        last = self.records[-1]
        values: dict[str, float] = {"step": last["step"], "bytes_per_worker": last["bytes_per_worker"]}
        for name in METRICS:
            series = [r[name] for r in self.records if name in r]
            if series:
                values[f"final_{name}"] = last.get(name, series[-1])
                if name not in FINAL_ONLY:
                    values[f"best_{name}"] = max(series) if higher_is_better(name) else min(series)
        if self.wall_s is not None:
            values["wall_s"] = self.wall_s
        return values


def higher_is_better(metric: str) -> bool:
    """Accuracy: higher is better; everything else (losses, perplexity, distances): lower."""
    return "accuracy" in metric


def metric_column(name: str) -> str:
    """The results.csv column that ``--by NAME`` means: ``final_NAME`` for a plain metric name."""
    if name in METRICS:
        return f"final_{name}"
    known = [f"final_{m}" for m in METRICS] + [f"best_{m}" for m in METRICS if m not in FINAL_ONLY]
    if name in known:
        return name
    raise ValueError(f"--by {name!r}: not a metric; allowed: {', '.join(METRICS)} "
                     f"(the final value) or final_NAME / best_NAME")


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metric records; a torn last line (a killed run) is left out."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def csv_text(results: list[RunResult], swept_keys: list[str]) -> str:
    """results.csv: one row per run."""
    metric_columns = [c for c in _metric_order() if any(c in r.metrics() for r in results)]
    header = ["label", *swept_keys, "seed", "status", "step", *metric_columns, "bytes_per_worker", "wall_s",
              "run_dir", "error"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for result in results:
        values = dict(result.run.values)
        metrics = result.metrics()
        writer.writerow([result.run.label, *(format_value(values[k]) if k in values else "" for k in swept_keys),
                         result.run.seed, result.status, metrics.get("step", ""),
                         *(metrics.get(c, "") for c in metric_columns), metrics.get("bytes_per_worker", ""),
                         "" if result.wall_s is None else round(result.wall_s, 2), result.run_dir, result.error])
    return buffer.getvalue()


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A results.csv's swept keys (the columns between ``label`` and ``seed``) and its rows."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    if "label" not in header or "seed" not in header:
        raise ValueError(f"{path}: not a sweep's results.csv (no label and seed columns)")
    return header[header.index("label") + 1: header.index("seed")], rows


def summary_markdown(results: list[RunResult], swept_keys: list[str], tune: str | None = None,
                     by: str = "eval_loss") -> str:
    """summary.md: mean ± std over seeds per configuration, the tuned choice per row, the failures."""
    groups: dict[Any, list[RunResult]] = defaultdict(list)
    for result in results:
        groups[result.run.configuration].append(result)
    columns = [c for c in SUMMARY_METRICS if any(c in r.metrics() for r in results)]
    done = sum(r.status == "done" for r in results)
    lines = ["# Sweep summary", "",
             f"{len(results)} runs in {len(groups)} configurations: {done} done, {len(results) - done} not. "
             "Each cell is the mean ± sample standard deviation (n − 1) over the configuration's finished seeds "
             "of each run's final value (`best_`: the run's best measurement; lower is better except for "
             "accuracy). `seeds`: finished / run.", ""]
    lines += _table(["row", *swept_keys, "seeds", *columns],
                    [[label, *_cells(values, swept_keys), _seeds(members), *_stats(members, columns)]
                     for (label, values), members in groups.items()])
    if tune is not None:
        lines += ["", *_tuned(groups, swept_keys, columns, tune, by)]
    failed = [r for r in results if r.status != "done"]
    if failed:
        lines += ["", "## Runs not done", ""]
        lines += [f"- `{r.run_dir.name}` ({r.status}): {r.error or 'no log line'}" for r in failed]
    return "\n".join(lines) + "\n"


def format_stats(values: list[float]) -> str:
    """``mean ± std`` (sample std), the mean alone for one value, ``–`` for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def _tuned(groups: dict[Any, list[RunResult]], swept_keys: list[str], columns: list[str], tune: str,
           by: str) -> list[str]:
    column = metric_column(by)
    sign = 1 if higher_is_better(column) else -1
    others = [k for k in swept_keys if k != tune]
    candidates: dict[Any, list[tuple[Any, list[RunResult]]]] = defaultdict(list)
    for (label, values), members in groups.items():
        swept = dict(values)
        if tune in swept:
            rest = tuple((k, swept[k]) for k in others if k in swept)
            candidates[(label, rest)].append((swept[tune], members))
    rows = []
    for (label, rest), options in candidates.items():
        scored = [(statistics.mean(v), value, members) for value, members in options
                  if (v := _values(members, column))]
        tried = [value for value, _ in options]
        if not scored:
            rows.append([label, *_cells(rest, others), "–", "none finished", ", ".join(map(format_value, tried)),
                         *["–"] * len(columns)])
            continue
        _, best, members = max(scored, key=lambda s: sign * s[0])
        edge = " (edge)" if _at_edge(best, tried) else ""
        rows.append([label, *_cells(rest, others), f"{format_value(best)}{edge}", _seeds(members),
                     ", ".join(map(format_value, tried)), *_stats(members, columns)])
    direction = "higher" if sign > 0 else "lower"
    return [f"## Tuned: {tune} by {column} ({direction} is better)", "",
            f"Per row (and per value of its other swept keys), the value of {tune} whose mean {column} over "
            "seeds is best, and that configuration's numbers. `(edge)`: the best value is the smallest or "
            "largest tried; widen the grid.", "",
            *_table(["row", *others, tune, "seeds", "tried", *columns], rows)]


def _at_edge(best: Any, tried: list[Any]) -> bool:
    numbers = [v for v in tried if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(numbers) == len(tried) > 2 and best in (min(numbers), max(numbers))


def _values(members: Iterable[RunResult], column: str) -> list[float]:
    return [r.metrics()[column] for r in members if r.status == "done" and column in r.metrics()]


def _stats(members: list[RunResult], columns: list[str]) -> list[str]:
    return [format_stats(_values(members, c)) for c in columns]


def _seeds(members: list[RunResult]) -> str:
    return f"{sum(r.status == 'done' for r in members)}/{len(members)}"


def _cells(values: tuple[tuple[str, Any], ...], keys: list[str]) -> list[str]:
    swept = dict(values)
    return [format_value(swept[k]) if k in swept else "" for k in keys]


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _metric_order() -> list[str]:
    order = []
    for name in METRICS:
        order.append(f"final_{name}")
        if name not in FINAL_ONLY:
            order.append(f"best_{name}")
    return order
