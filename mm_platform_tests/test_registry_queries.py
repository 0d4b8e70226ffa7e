"""The registry's ORM lookups give what MLflow's own search gives."""

from mm_platform.stores.registry import ModelRegistry


def _entries(dataset: str, items, run: int):
    return [
        (f"{dataset}.store_1.item_{i}", f'{{"run": {run}}}'.encode(),
         {"dataset": dataset, "series_id": f"store=1,item={i}", "key.store": "1", "key.item": str(i), "run": str(run)})
        for i in items
    ]


def test_latest_by_series_matches_mlflow_search(tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path}/r.db", str(tmp_path / "artifacts"), "exp")
    reg.register_many(_entries("a", range(1, 5), 1), run_name="r1", run_tags={})
    reg.register_many(_entries("a", [2, 3], 2), run_name="r2", run_tags={})
    reg.register_many(_entries("a", [3], 3), run_name="r3", run_tags={})
    reg.register_many(_entries("b", [1, 2], 1), run_name="other dataset", run_tags={})
    reg.client.delete_model_version("a.store_1.item_3", "3")  # deleted: version 2 is the newest again
    fast, slow = reg.latest_by_series("a"), reg._latest_by_series_client("a")
    assert fast == slow
    assert {sid: m.version for sid, m in fast.items()} == {
        "store=1,item=1": 1, "store=1,item=2": 2, "store=1,item=3": 2, "store=1,item=4": 1
    }
    assert fast["store=1,item=2"].tags["run"] == "2" and "artifact_sha256" in fast["store=1,item=2"].tags
    assert reg.load_model(fast["store=1,item=2"]) == {"run": 2}
    assert reg.latest_by_series("b") == reg._latest_by_series_client("b") and len(reg.latest_by_series("b")) == 2
    assert reg.latest_by_series("none") == {}
