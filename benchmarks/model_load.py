"""Load time of the embedded model: the first load (GGUF dequantized, weights cached) and the second (cache).

Each load runs in a fresh Python process, so nothing stays in memory between them; the cache directory is a new
temporary one, so the first load really converts the GGUF file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json

CHILD = """
import sys, time
from pathlib import Path
t0 = time.perf_counter()
from antidistill.models.local import LocalModel
m = LocalModel.load(None, Path(sys.argv[1]))
print(f"{time.perf_counter() - t0:.3f} {m.load_stats.seconds:.3f} {int(m.load_stats.from_cache)}")
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="cached loads to time")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for i in range(1 + args.repeats):
            out = subprocess.run([sys.executable, "-c", CHILD, cache], capture_output=True, text=True, check=True)
            total, weights, cached = out.stdout.split()[-3:]
            rows.append(
                {
                    "load": "first (convert GGUF)" if i == 0 else f"cached #{i}",
                    "from_cache": cached == "1",
                    "weights_s": float(weights),
                    "process_total_s": float(total),
                }
            )
    print(
        table(
            ["load", "from cache", "weights s", "total s (imports included)"],
            [[r["load"], r["from_cache"], r["weights_s"], r["process_total_s"]] for r in rows],
        )
    )
    path = write_json("model_load", {"loads": rows}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
