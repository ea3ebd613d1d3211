"""What the bench prints and writes: the header, the time table (row by row, as
pairs finish), the memory table, warnings, skipped peers and failures, the JSON
rows (rewritten after every row, so an interrupted run keeps what it did) and, at
the end, a markdown table of the rows with the machine, the versions and the date.
"""

from __future__ import annotations

import json
import os
import sys
import time

from cudeform._bench.memory import MIB

TIME_COLUMNS = (("op", 17, "<"), ("shape", 19, "<"), ("dtype", 8, "<"), ("device", 15, "<"),
                ("pass", 7, "<"), ("cudeform ms", 11, ">"), ("peer", 30, "<"),
                ("peer ms", 9, ">"), ("ratio", 8, ">"))
MARKDOWN_COLUMNS = ("op", "layer", "device", "pass", "cudeform ms", "peer", "peer ms", "ratio")
MEMORY_COLUMNS = (("op", 13, "<"), ("shape", 19, "<"), ("dtype", 8, "<"), ("device", 15, "<"),
                  ("cudeform peak MiB", 17, ">"), ("peer", 25, "<"), ("peer peak MiB", 13, ">"),
                  ("ratio", 8, ">"))


def _line(columns, values):
    return "  ".join(f"{str(value):{align}{width}}"
                     for (_, width, align), value in zip(columns, values)).rstrip()


def _header(columns):
    return _line(columns, [name for name, _, _ in columns])


def _ms(value):
    return "n/a" if value is None else f"{value:.3f}"


def _mib(value):
    return "n/a" if value is None else f"{value / MIB:.1f}"


def _markdown_row(values):
    return "| " + " | ".join(str(value) for value in values) + " |"


def markdown(rows, context, shapes):
    """The rows as a markdown table, after a line naming the machine, the versions and
    the date (``context``) and before the list of ``shapes`` (label: description)."""
    lines = [f"Measured {context.get('date', '')} on {context.get('machine', 'unknown')}; "
             f"{context.get('versions', '')}.", "",
             _markdown_row(MARKDOWN_COLUMNS), _markdown_row(["---"] * len(MARKDOWN_COLUMNS))]
    for row in rows:
        ratio = "mismatch" if row.ratio is None else f"{row.ratio:.2f}"
        lines.append(_markdown_row((row.op, row.label, row.device, row.passes, _ms(row.ms),
                                    row.peer, _ms(row.peer_ms), ratio)))
    lines.append("")
    lines += [f"- {label}: {shape}" for label, shape in shapes.items()]
    return "\n".join(lines) + "\n"


def write_json(path, rows):
    """Write ``rows`` (JSON dicts) to ``path`` atomically."""
    temporary = f"{path}.partial"
    with open(temporary, "w") as file:
        json.dump(rows, file, indent=1)
        file.write("\n")
    os.replace(temporary, path)


class Report:
    """Listener of the runner: prints as results come, keeps them for the summary."""

    def __init__(self, out=None, json_path=None, memory_note=None, markdown_path=None):
        self.out = out if out is not None else sys.stdout
        self.json_path = json_path
        self.markdown_path = markdown_path
        self.memory_note = memory_note
        self.facts = {"date": time.strftime("%Y-%m-%d")}
        self.rows = []
        self.memory_rows = []
        self.warnings = []
        self.failures = []
        self.skips = {}  # (peer, reason) -> places, in order of arrival
        self._table_started = False

    def print(self, text=""):
        print(text, file=self.out, flush=True)

    def context(self, **facts):
        """Print ``machine: ...`` and ``versions: ...`` lines, kept for the markdown."""
        for name, value in facts.items():
            self.print(f"{name}: {value}")
        self.facts.update(facts)

    # --- the runner's listener interface --------------------------------------------

    def row(self, row):
        self.start_table()
        ratio = "mismatch" if row.ratio is None else f"{row.ratio:.2f}"
        self.print(_line(TIME_COLUMNS, (row.op, row.label, row.dtype, row.device, row.passes,
                                        _ms(row.ms), row.peer, _ms(row.peer_ms), ratio)))
        self.rows.append(row)
        if self.json_path:
            write_json(self.json_path, [r.as_json() for r in self.rows])

    def memory(self, memory_row):
        self.memory_rows.append(memory_row)

    def warning(self, text):
        self.warnings.append(text)
        self.print(f"WARNING: {text}")

    def failure(self, text):
        self.failures.append(text)
        self.print(f"FAILED: {text}")

    def skipped(self, peer, reason, where=None):
        places = self.skips.setdefault((peer, reason.strip().splitlines()[0]), [])
        if where is not None and where not in places:
            places.append(where)

    # --- the summary -------------------------------------------------------------------

    def start_table(self):
        """Print the column header now (a run without rows still shows its columns)."""
        if not self._table_started:
            self.print(_header(TIME_COLUMNS))
            self._table_started = True

    def summary(self):
        if self.json_path and not self.rows:
            write_json(self.json_path, [])
        if self.markdown_path:
            shapes = {}
            for row in self.rows:
                label, _, description = row.shape.partition(": ")
                shapes.setdefault(label, description)
            with open(self.markdown_path, "w") as file:
                file.write(markdown(self.rows, self.facts, shapes))
        self.print()
        self.print("peak extra memory of forward+backward (n/a: not visible to the bench; "
                   "ratio = cudeform / peer):")
        if self.memory_note:
            self.print(self.memory_note)
        self.print(_header(MEMORY_COLUMNS))
        for m in self.memory_rows:
            ratio = ("n/a" if m.cudeform_bytes is None or not m.peer_bytes
                     else f"{m.cudeform_bytes / m.peer_bytes:.2f}")
            self.print(_line(MEMORY_COLUMNS, (m.op, m.label, m.dtype, m.device,
                                              _mib(m.cudeform_bytes), m.peer, _mib(m.peer_bytes),
                                              ratio)))
        if self.skips:
            self.print()
            for (peer, reason), places in self.skips.items():
                if places:
                    self.print(f"skipped: {peer} on {', '.join(places)}: {reason}")
                else:
                    self.print(f"skipped: {peer} ({reason})")
        if self.warnings:
            self.print()
            self.print(f"{len(self.warnings)} warning(s): a peer disagreed with cudeform or "
                       "could not be measured; see WARNING lines above.")
        if self.failures:
            self.print()
            for text in self.failures:
                self.print(f"FAILED: {text}")
