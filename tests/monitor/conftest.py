"""Fixtures of the monitor tests: the policy file they enforce, a fresh PostgreSQL schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.conftest import POSTGRES_URL, postgres_or_skip

POLICY = """
version: 1
name: Test terms
clauses:
  - {id: "4.1", title: Distillation, text: "You may not use outputs of the Services to train a competing model."}
  - {id: "4.2", title: Bulk extraction, text: "You may not extract outputs in bulk by automated means."}
rules:
  - {level: watch, action: flag, clause: "4.2"}
  - {level: alert, action: throttle, clause: "4.2", rpm: 2}
  - {level: severe, action: block, clause: "4.1"}
"""
CLAUSE_41 = "You may not use outputs of the Services to train a competing model."


@pytest.fixture
def policy_file(tmp_path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    return p


@pytest.fixture
def pg_url() -> Iterator[str]:
    from sqlalchemy.engine import make_url

    conn = postgres_or_skip()
    schema = f"mon_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE SCHEMA "{schema}"')
    yield (
        make_url(POSTGRES_URL)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    conn.close()
