"""What keeps the driver's memory flat in the number of series (issue #18): registration
consumes its entries a chunk at a time in one transaction, the warehouse writes Arrow tables
and frames a chunk at a time, and scoring tasks read the production models themselves (the
numbers: ``python -m benchmarks cluster``, docs/performance.md)."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mm_platform.stores import registry as registry_module
from mm_platform.stores import warehouse as warehouse_module
from mm_platform.stores.registry import ModelRegistry
from mm_platform.stores.warehouse import Warehouse


def _entry(i: int, consumed: list[int]):
    consumed.append(i)
    return (f"ds.store_1.item_{i}", f'{{"i": {i}}}'.encode(),
            {"dataset": "ds", "series_id": f"store=1,item={i}", "key.store": "1", "key.item": str(i)})


def test_register_many_streams_its_entries_in_one_transaction(tmp_path, monkeypatch):
    monkeypatch.setattr(registry_module, "REGISTER_CHUNK", 4)
    reg = ModelRegistry(f"sqlite:///{tmp_path}/r.db", str(tmp_path / "artifacts"), "exp")
    consumed: list[int] = []
    seen_when_first_written: list[int] = []
    real = registry_module._bulk_register

    def spy(store, chunks, *a, **k):
        def watched():
            for chunk in chunks:
                seen_when_first_written.append(len(consumed))
                yield chunk
        return real(store, watched(), *a, **k)

    monkeypatch.setattr(registry_module, "_bulk_register", spy)
    out = reg.register_many((_entry(i, consumed) for i in range(1, 11)), run_name="r", run_tags={}, alias="production")
    assert [m.version for m in out] == [1] * 10 and len(reg.latest_by_series("ds")) == 10
    # The generator was read a chunk at a time, not listed first: 4, 8, then the last 2.
    assert seen_when_first_written == [4, 8, 10]
    assert len(reg.aliased_by_series("ds")) == 10
    assert reg.load_model(reg.latest_by_series("ds")["store=1,item=7"]) == {"i": 7}

    # A failure in the middle of the stream registers nothing (one transaction).
    def broken():
        for i in range(11, 20):
            if i == 17:
                raise RuntimeError("the source of entries broke")
            yield _entry(i, consumed)

    with pytest.raises(RuntimeError, match="broke"):
        reg.register_many(broken(), run_name="r2", run_tags={})
    assert len(reg.latest_by_series("ds")) == 10


def test_scoring_reads_only_references_in_the_driver(tmp_path):
    """The production lookup for scoring reads the tags it needs, not every tag."""
    reg = ModelRegistry(f"sqlite:///{tmp_path}/r.db", str(tmp_path / "artifacts"), "exp")
    reg.register_many([_entry(i, []) for i in range(3)], run_name="r", run_tags={}, alias="production")
    narrow = reg.aliased_by_series("ds", tag_keys=["key.item"])
    full = reg.aliased_by_series("ds")
    assert set(narrow) == set(full)
    assert all(set(m.tags) == {"key.item", "series_id"} for m in narrow.values())
    assert all({"key.store", "artifact_sha256"} <= set(m.tags) for m in full.values())
    client = reg._aliased_by_series_client("ds", "production")
    assert {sid: (m.name, m.version, m.source) for sid, m in client.items()} == {
        sid: (m.name, m.version, m.source) for sid, m in narrow.items()}


@pytest.mark.parametrize("as_arrow", [False, True])
def test_warehouse_writes_frames_and_arrow_tables_a_chunk_at_a_time(tmp_path, monkeypatch, as_arrow):
    monkeypatch.setattr(warehouse_module, "INSERT_CHUNK", 7)
    wh = Warehouse(f"sqlite:///{tmp_path}/w.db", "ds", ["store", "item"])
    run = date(2025, 12, 31)
    rows = pd.DataFrame({
        "store": [1] * 30, "item": [i // 3 for i in range(30)], "series_id": [f"store=1,item={i // 3}" for i in range(30)],
        "ds": [date(2026, 1, 1 + i % 3) for i in range(30)], "yhat": [float(i) for i in range(30)],
        "yhat_lower": [None] * 29 + [1.0], "yhat_upper": [float(i) + 1 for i in range(30)],
        "model_name": [f"ds.store_1.item_{i // 3}" for i in range(30)], "model_version": [1] * 30,
        "scoring_run_id": ["s"] * 30, "tier": ["champion"] * 30,
    })
    table = pa.Table.from_pandas(rows, preserve_index=False)
    for name in ("series_id", "model_name", "tier"):
        table = table.set_column(table.schema.get_field_index(name), name, pc.dictionary_encode(table[name]))
    written = wh.replace_runs(run, {"predictions": table if as_arrow else rows})
    assert written == {"predictions": 30}
    back = wh.read("SELECT * FROM predictions ORDER BY yhat")
    assert len(back) == 30 and back["series_id"].tolist() == rows["series_id"].tolist()
    assert back["yhat_lower"].isna().sum() == 29 and back["tier"].eq("champion").all()
    assert set(back["run_date"].astype(str)) == {"2025-12-31"}
