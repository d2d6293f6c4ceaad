"""README's supported-model table is the one ``benchmarks/model_table.py`` renders from its
recorded results (issue 20); the slow test records them again and checks they still hold."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("model_table", ROOT / "benchmarks" / "model_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_table_is_current():
    mt = _script()
    rows = json.loads(mt.DATA.read_text())
    assert rows and {"model", "family", "capture", "units", "landing", "reload"} <= set(rows[0])
    text = mt.README.read_text()
    assert text.count(mt.START) == 1 and text.count(mt.END) == 1
    assert mt.block(rows) in text, "README's model table is stale: run python benchmarks/model_table.py readme"
    assert {r["capture"] for r in rows} >= {"fx", "export"}


@pytest.mark.slow
@pytest.mark.zoo  # out of the default run: shrinks five models (about 25 s); python -m pytest -m zoo
def test_recorded_table_still_holds(monkeypatch, tmp_path):
    mt = _script()
    before = json.loads(mt.DATA.read_text())
    monkeypatch.setattr(mt, "DATA", tmp_path / "model_table.json")
    rows = mt.record()
    assert [r["model"] for r in rows] == [r["model"] for r in before]
    for new, old in zip(rows, before):
        assert new["capture"] == old["capture"] and new["units"] == old["units"] and new["reload"] == old["reload"]
        assert abs(new["landing"] - 0.5) <= 0.011, new
