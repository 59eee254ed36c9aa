"""Compare-and-set increments for the store race tests, in a thread or in its own process.

As a script (``python _store_race_worker.py DB CONNECTION_ID TIMES PAUSE``) it opens an
``SQLiteStore``, prints ``ready``, waits for a line on stdin so that every process starts at
once, increments TIMES times and prints how many of its compare-and-sets lost a race.
"""

from __future__ import annotations

import sys
import time

import attrs

from amo_oauth.stores import SQLiteStore, Store


def increment(store: Store, connection_id: str, times: int, pause: float = 0.0) -> int:
    """Add 1 to the record's version and to the counter kept in ``host``, ``times`` times.

    ``pause`` seconds between the load and the compare-and-set widen the window in which another
    writer can get in first. Returns how many compare-and-sets lost to another writer (each is
    retried after a reload).
    """
    conflicts = 0
    done = 0
    while done < times:
        current = store.load(connection_id).record
        assert current is not None
        if pause:
            time.sleep(pause)
        bumped = attrs.evolve(current, version=current.version + 1, host=str(int(current.host) + 1))
        if store.compare_and_set(bumped, current.version):
            done += 1
        else:
            conflicts += 1
    return conflicts


def main(path: str, connection_id: str, times: str, pause: str) -> None:
    store = SQLiteStore(path)
    try:
        store.load(connection_id)  # open the file before the start line, not after
        print("ready", flush=True)
        sys.stdin.readline()
        print(increment(store, connection_id, int(times), float(pause)), flush=True)
    finally:
        store.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
