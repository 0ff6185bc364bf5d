"""Fixtures of the monitor tests: the policy file they enforce, a fresh PostgreSQL schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.conftest import pg_schema  # noqa: F401 (the fixture behind pg_url)

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
def pg_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh PostgreSQL schema (the gateway tests' fixture)."""
    url: str = request.getfixturevalue("pg_schema")
    return url
