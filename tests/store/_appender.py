"""A writer process for the concurrency and kill -9 tests: appends COUNT records, printing "seq response_id"
after each append has returned (i.e. committed)."""

from __future__ import annotations

import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))

from antidistill.settings import Settings
from antidistill.store.sql import Store
from tests.store.entries import make_entry


def main() -> None:
    url, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = Store.open(url, Settings())
    for i in range(count):
        seq = store.append_audit(make_entry(i, response_id=f"{tag}-{i}"))
        sys.stdout.write(f"{seq} {tag}-{i}\n")
        sys.stdout.flush()
    store.close()


if __name__ == "__main__":
    main()
