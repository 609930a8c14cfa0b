"""The import contract of rdfs (tests/importcontract.py explains the rules), one test per rule.

Each failing test prints every violation of its rule as ``[rule] path:line: what``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests import importcontract as contract

ROOT = Path(__file__).resolve().parents[2]
RULES = ("pyfuse3", "sqlite", "api", "emulator", "layers", "cycles")


@pytest.fixture(scope="module")
def violations() -> list[contract.Violation]:
    modules = contract.load(ROOT)
    assert "rdfs.cli" in modules and "rdfs.api.client" in modules, sorted(modules)
    return contract.check(modules)


@pytest.mark.parametrize("rule", RULES)
def test_import_contract(rule: str, violations: list[contract.Violation]) -> None:
    mine = [v for v in violations if v.rule == rule]
    if mine:
        pytest.fail(contract.report(mine), pytrace=False)


def _plant(root: Path, files: dict[str, str]) -> dict[str, contract.Module]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return contract.load(root)


def test_checker_catches_planted_violations(tmp_path: Path) -> None:
    """Each rule fires on a planted breach, so the contract test cannot pass vacuously."""
    modules = _plant(
        tmp_path,
        {
            "rdfs/__init__.py": "",
            "rdfs/config.py": "from rdfs.sync import syncer\n",
            "rdfs/api/__init__.py": "",
            "rdfs/api/client.py": "from rdfs import config\n",
            "rdfs/emulator/__init__.py": "from rdfs.outcome import FsError\n",
            "rdfs/store/__init__.py": "",
            "rdfs/store/metadata.py": """\
                import sqlite3
                Q = "SELECT 1 FROM meta"
                def f():
                    from rdfs.data import reader
                """,
            "rdfs/data/__init__.py": "",
            "rdfs/data/reader.py": """\
                import sqlite3
                from rdfs.store import metadata
                from rdfs.tree.specs import Node
                """,
            "rdfs/tree/__init__.py": "",
            "rdfs/tree/specs.py": """\
                '''Select the nodes from the tree (a docstring, not SQL).'''
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from rdfs.sync.syncer import Syncer
                LOOKUP = f"select inode from entries where parent = {1}"
                METHOD = "DELETE"
                """,
            "rdfs/sync/__init__.py": "",
            "rdfs/sync/syncer.py": """\
                import pyfuse3
                from rdfs.emulator import Emulator
                BEGIN = "BEGIN IMMEDIATE"
                """,
            "rdfs/fuse/__init__.py": "",
            "rdfs/fuse/ops.py": "import pyfuse3\nfrom rdfs.control import files\n",
            "rdfs/control/__init__.py": "",
            "rdfs/control/files.py": "from rdfs import config, outcome\nfrom rdfs.tree import x\n",
            "rdfs/outcome.py": "",
            "rdfs/cli.py": "from rdfs.emulator import Emulator\nfrom rdfs.fuse import ops\n",
            "rdfs/stray.py": "",
        },
    )
    found = {(v.rule, v.module, v.line) for v in contract.check(modules)}
    expected = {
        ("pyfuse3", "rdfs.sync.syncer", 1),
        ("sqlite", "rdfs.data.reader", 1),
        ("sqlite", "rdfs.tree.specs", 5),
        ("sqlite", "rdfs.sync.syncer", 3),
        ("api", "rdfs.api.client", 1),
        ("emulator", "rdfs.emulator", 1),
        ("layers", "rdfs.config", 1),  # common imports a layer
        ("layers", "rdfs.store.metadata", 4),  # store imports data (deferred)
        ("layers", "rdfs.data.reader", 3),  # siblings
        ("layers", "rdfs.tree.specs", 4),  # upward, TYPE_CHECKING counts
        ("layers", "rdfs.sync.syncer", 2),  # only the CLI imports the emulator
        ("layers", "rdfs.stray", 1),  # a module outside the contract
        ("cycles", "rdfs.data.reader", 2),  # reader -> metadata -> (deferred) reader
    }
    assert found == expected


def test_type_checking_imports_make_no_cycle(tmp_path: Path) -> None:
    modules = _plant(
        tmp_path,
        {
            "rdfs/__init__.py": "",
            "rdfs/emulator/__init__.py": "",
            "rdfs/emulator/core.py": "def app():\n    from .app import b\n",
            "rdfs/emulator/app.py": """\
                import typing
                if typing.TYPE_CHECKING:
                    from .core import E
                """,
        },
    )
    assert contract.check(modules) == []


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "select count(*) from entries",
        "  INSERT OR REPLACE INTO meta (key) VALUES (?)",
        "REPLACE INTO t VALUES (1)",
        "UPDATE entries SET nlink = ?",
        "delete from links",
        "CREATE TABLE IF NOT EXISTS files (x)",
        "CREATE UNIQUE INDEX i ON t (x)",
        "PRAGMA journal_mode=WAL",
        "BEGIN",
        "BEGIN IMMEDIATE;\nINSERT INTO t VALUES (1)",
        "COMMIT",
        "WITH RECURSIVE up(inode) AS (SELECT 1)",
        "with t as (select 1) select * from t",
    ],
)
def test_sql_is_recognised(text: str) -> None:
    assert contract.is_sql(text)


@pytest.mark.parametrize(
    "text",
    [
        "DELETE",
        "delete",
        "replace",
        "release",
        "end",
        "create",
        " with files",
        "Drop None values",
        "update hook killed after %.0f s",
        "Delete torrents (by id)",
        "selected",
        "begin again",
        "with a private API token (",
    ],
)
def test_prose_is_not_sql(text: str) -> None:
    assert not contract.is_sql(text)
