"""The worker's item caches, kept in SQLite so they survive a restart.

``processed`` remembers which version of each item a task has already run, so
``run_on_new_data_only`` skips it; ``failed`` remembers the items that failed
for good, skipped on the next run unless ``force_rerun_failed_files``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import final

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed (
    scope TEXT NOT NULL, item TEXT NOT NULL, modified TEXT NOT NULL,
    PRIMARY KEY (scope, item)
);
CREATE TABLE IF NOT EXISTS failed (
    scope TEXT NOT NULL, item TEXT NOT NULL, error TEXT NOT NULL,
    PRIMARY KEY (scope, item)
);
"""


@final
class ItemCache:
    """Processed and failed items of one pod, per scope (project or protocol).

    Each write commits at once: a worker killed mid-task keeps what it had
    recorded before it died.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def processed(self, scope: str) -> dict[str, str]:
        rows = self._db.execute("SELECT item, modified FROM processed WHERE scope = ?", (scope,))
        return dict(rows.fetchall())

    def failed(self, scope: str) -> dict[str, str]:
        rows = self._db.execute("SELECT item, error FROM failed WHERE scope = ?", (scope,))
        return dict(rows.fetchall())

    def mark_processed(self, scope: str, items: Iterable[tuple[str, str]]) -> None:
        items = list(items)
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO processed VALUES (?, ?, ?)",
                [(scope, name, modified) for name, modified in items],
            )
            self._db.executemany(
                "DELETE FROM failed WHERE scope = ? AND item = ?",
                [(scope, name) for name, _ in items],
            )

    def mark_failed(self, scope: str, items: Iterable[tuple[str, str]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO failed VALUES (?, ?, ?)",
                [(scope, name, error) for name, error in items],
            )
