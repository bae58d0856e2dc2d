"""The benchmark's results: one JSON line per verified cell, appended as each cell finishes.

A killed run leaves at worst a truncated last line; reading drops it (and says so), and the next run
rewrites the file without it before appending, so resuming never duplicates or corrupts a cell. Each
line is one ``write`` to a file opened for appending, so runs that share the file (``--methods``
parts) never interleave their lines (on a local filesystem: NFS does not make appends atomic, which is
why a run's workers send their records to the coordinator, the only one that writes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from modelprove.core.fileio import atomic_write_bytes


class ResultLog:
    """Records by cell key; ``add`` appends one line and flushes it to disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.dropped = 0
        if self.path.is_file():
            lines = self.path.read_text().splitlines()
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    self.dropped += 1
                    continue
                if isinstance(record, dict) and "cell" in record:
                    self.records[record["cell"]] = record
            if self.dropped:
                body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records.values())
                atomic_write_bytes(self.path, body.encode())

    def __contains__(self, cell: str) -> bool:
        return cell in self.records

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_line(self.path, json.dumps(record, sort_keys=True))
        self.records[record["cell"]] = record


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline with a single write(2) on an O_APPEND descriptor, then fsync: a
    buffered text file would split a long line into several writes, between which another process's
    line could land."""
    data = (line + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(descriptor, data)
        while written < len(data):  # only on a full disk or a signal: finish the line rather than leave half
            written += os.write(descriptor, data[written:])
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class RunHistory:
    """``runs.jsonl`` beside the results: one line per run that was not report-only (when, on what, how
    long), so a report can say how its numbers were made, e.g. the empty-cache wall time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.runs: list[dict[str, Any]] = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    self.runs.append(json.loads(line))
                except json.JSONDecodeError:  # a run killed mid-write: it left no numbers worth keeping
                    continue

    def add(self, run: dict[str, Any]) -> None:
        append_line(self.path, json.dumps(run, sort_keys=True))
        self.runs.append(run)
