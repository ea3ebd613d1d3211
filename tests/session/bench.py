"""The bench stage of the GPU session: every GPU peer on S1-S4 and their batch-16 versions,
forward and forward+backward, float32, float16 and bfloat16, with peak memory and the
deterministic backward against the default one.

``python -m tests.session.bench OUT_DIR`` writes ``bench_gpu.json`` and
``bench_gpu.md`` there and prints the bench's tables, then a line ``summary: ...``
(rows, the median ratio against each peer and pass, failures). It times with the
bench's quick GPU settings over the full set of layers and dtypes, so that the
layers come in order of size within the stage's time limit; on SIGINT (the time
limit) the rows already done are kept. Exit status: the bench's.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys

from cudeform import _bench
from cudeform._bench.cases import GPU_CASES, GPU_CASES_BATCH_16


def summarize(rows, status):
    """One line: rows, the median ratio per (peer, pass), and the exit status."""
    ratios = {}
    for row in rows:
        if row["ratio"] is not None:
            ratios.setdefault((row["peer"], row["pass"]), []).append(row["ratio"])
    medians = "; ".join(f"{peer} {passes} x{statistics.median(values):.2f} ({len(values)})"
                        for (peer, passes), values in sorted(ratios.items()))
    return (f"summary: {len(rows)} rows, exit status {status}; median cudeform/peer time: "
            f"{medians or 'none'}")


def main(out_dir):
    out = pathlib.Path(out_dir)
    json_path, markdown_path = out / "bench_gpu.json", out / "bench_gpu.md"
    status = _bench.run("cuda", GPU_CASES + GPU_CASES_BATCH_16,
                        settings=_bench.SETTINGS[("cuda", True)], json_path=str(json_path),
                        markdown_path=str(markdown_path))
    rows = json.loads(json_path.read_text()) if json_path.exists() else []
    print(summarize(rows, status))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
