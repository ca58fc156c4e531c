"""Merge grid-benchmark JSONs (``bench_baselines``, ``bench_recipe``, ``bench_finegrainedad``) by part.

Each input has ``parts``: ``{part: [row summaries]}``, one summary per (``row``, ``k``),
where ``k`` is a number of shots or ``"all"`` (the summary over the input's k). Parts are
merged in the order of the inputs; a (``row``, ``k``) pair given by a later input replaces
an earlier one, and the merged file says which input each part's rows came from.

``--whole-parts``: a part given by a later input replaces that part wholly (a rerun of the
part with more seeds, say), so its rows never mix with the earlier input's.

An ``"all"`` row summarises the cells of its own input only: where a part takes rows from
more than one input, it would no longer summarise the merged k, so each such row is kept
with ``k`` relabelled to the k it does cover (e.g. ``"all of 1, 2, 4"``), and a ``"all"``
row that covers a single k already listed is dropped.

    .venv/bin/python bench/merge_results.py --out bench/results/DIR/baselines.json \\
        bench/results/OLD/baselines.json runs/bench/baselines_pocket_k8.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vtfusion.io import atomic_write_json


def _covered_k(rows: list[dict]) -> list:
    return sorted({r["k"] for r in rows if r["k"] != "all"})


def merge(records: list[tuple[str, dict]], whole_parts: bool = False) -> dict:
    """Merge ``(name, record)`` pairs into one record with ``parts``, ``merged_from`` and ``sources``.

    ``whole_parts``: a later input's part replaces the earlier inputs' rows of that part wholly."""
    parts: dict[str, dict[tuple, dict]] = {}  # part -> (row, k) or (row, 'all', covered k) -> summary
    sources: dict[str, list[str]] = {}
    for name, record in records:
        for part, rows in record.get("parts", {}).items():
            covered = _covered_k(rows)
            if whole_parts:
                parts.pop(part, None)
                sources.pop(part, None)
            merged = parts.setdefault(part, {})
            sources.setdefault(part, []).append(name)
            for row in rows:
                row = dict(row)
                if row["k"] == "all":  # keyed by what it covers: summaries of other k never replace it
                    row["k_covered"] = covered
                    merged[(row["row"], "all", tuple(covered))] = row
                else:
                    merged[(row["row"], str(row["k"]))] = row
    out_parts = {}
    for part, rows in parts.items():
        if len(sources[part]) > 1:
            relabelled = {}
            for key, row in rows.items():
                if row["k"] == "all":
                    if len(row["k_covered"]) == 1 and (key[0], str(row["k_covered"][0])) in rows:
                        continue  # the summary of a single k that has its own row
                    row = {**row, "k": "all of " + ", ".join(str(x) for x in row["k_covered"])}
                relabelled[key] = row
            order = list(dict.fromkeys(key[0] for key in relabelled))  # methods as they first came
            rows = dict(sorted(relabelled.items(), key=lambda item: (
                order.index(item[0][0]), isinstance(item[1]["k"], str), str(item[1]["k"]).zfill(4))))
        out_parts[part] = list(rows.values())
    return {"merged_from": [{"file": name, "argv": record.get("argv"), "environment": record.get("environment"),
                             "merged_from": record.get("merged_from")} for name, record in records],
            "sources": sources, "parts": out_parts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--note", default=None, help="a sentence kept in the merged file")
    p.add_argument("--whole-parts", action="store_true",
                   help="a part given by a later input replaces that part of the earlier ones wholly")
    args = p.parse_args(argv)
    for path in args.inputs:
        if not path.is_file():
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    record = merge([(str(path), json.loads(path.read_text())) for path in args.inputs], args.whole_parts)
    if args.note:
        record["note"] = args.note
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}: " + ", ".join(f"{part} ({len(rows)} rows from {len(record['sources'][part])} input(s))"
                                          for part, rows in record["parts"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
