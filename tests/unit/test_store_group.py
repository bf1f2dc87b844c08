"""Group commit (libs/store/group.py) on a real SQLite file: the writes submitted together share one
transaction, yet one that fails takes only its own changes back, and each caller gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from libs.store import create_engine
from libs.store.group import GroupCommit


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'group.db'}", pool_size=1, max_overflow=0)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE items (name TEXT PRIMARY KEY)"))
    yield engine
    engine.dispose()


def insert(name: str, then_fail: bool = False) -> Callable[[sa.Connection], str]:
    def work(connection: sa.Connection) -> str:
        connection.execute(sa.text("INSERT INTO items (name) VALUES (:name)"), {"name": name})
        if then_fail:
            raise ValueError(f"{name} failed after writing")
        return name

    return work


async def test_a_failed_write_takes_back_only_its_own_changes(engine: sa.Engine) -> None:
    commits: list[int] = []
    group = GroupCommit(engine, after_commit=lambda: commits.append(1))
    try:
        results = await asyncio.gather(
            group.run(insert("a")), group.run(insert("b", then_fail=True)), group.run(insert("c")),
            group.run(insert("a")),  # the primary key is taken by the first: a database error, its own
            return_exceptions=True,
        )  # fmt: skip
    finally:
        group.close()
    assert results[0] == "a" and results[2] == "c"
    assert isinstance(results[1], ValueError)
    assert isinstance(results[3], sa.exc.IntegrityError)
    assert commits == [1]  # submitted in one turn of the loop: one transaction
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT name FROM items ORDER BY name")).scalars().all() == ["a", "c"]


async def test_when_the_commit_fails_every_write_of_the_batch_fails_and_none_is_stored(engine: sa.Engine) -> None:
    with engine.begin() as connection:  # a deferred foreign key is checked at COMMIT
        connection.execute(
            sa.text("CREATE TABLE refs (item TEXT REFERENCES items (name) DEFERRABLE INITIALLY DEFERRED)")
        )

    def dangling(connection: sa.Connection) -> str:
        connection.execute(sa.text("INSERT INTO refs (item) VALUES ('nowhere')"))
        return "dangling"

    group = GroupCommit(engine)
    try:
        results = await asyncio.gather(group.run(insert("x")), group.run(dangling), return_exceptions=True)
    finally:
        group.close()
    assert all(isinstance(r, sa.exc.IntegrityError) for r in results), results
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM items")).scalar() == 0
