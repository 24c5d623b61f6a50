"""A codebase a newcomer can change: no function of the project above a cyclomatic complexity of 15
(McCabe's count, as flake8 reports it)."""
from __future__ import annotations

import ast
from pathlib import Path

import mccabe

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 15


def test_no_function_is_too_complex_to_change():
    over = []
    for package in ("pipeline", "operators", "schemas", "dags"):
        for path in sorted((ROOT / package).rglob("*.py")):
            visitor = mccabe.PathGraphingAstVisitor()
            visitor.preorder(ast.parse(path.read_text(), str(path)), visitor)
            over += [f"{path.relative_to(ROOT)}: {g.entity} {g.complexity()}" for g in visitor.graphs.values()
                     if g.complexity() > LIMIT]
    assert not over, over
