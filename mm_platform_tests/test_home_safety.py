"""Homes that cannot be half-created (issue 16): registry databases created atomically, one run
per home at a time, and `mm-platform doctor`.

Real SQLite MLflow stores and real processes, killed with SIGKILL. A kill in the middle of
MLflow's own schema creation is made deterministic by counting the DDL statements a process
sends to a registry database (SQLAlchemy's ``before_cursor_execute`` event) and killing the
process at the Nth: the 83rd creates ``logged_models``, so a kill at the 85th is what left the
homes of the issue broken for good (``table logged_models already exists``); the 266th adds
``target_value`` (``duplicate column name: target_value``)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform_tests.conftest import write_config

# Runs `python -m mm_platform.cli ...`, or (``-c`` code) MLflow's own first open of a registry,
# killed at the Nth DDL statement sent to a database whose URL contains MM_TEST_KILL_DDL's name.
DDL_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import sqlalchemy as sa
    target, nth = os.environ["MM_TEST_KILL_DDL"].rsplit(":", 1)
    seen = [0]

    @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def _kill(conn, cursor, statement, *args):
        if target in str(conn.engine.url) and statement.lstrip().upper().startswith(("CREATE", "ALTER", "DROP")):
            seen[0] += 1
            if seen[0] == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)

    if sys.argv[1] == "mlflow-open":  # what the platform did before: MLflow creates its schema in place
        from mlflow import MlflowClient
        MlflowClient(tracking_uri=sys.argv[2], registry_uri=sys.argv[2]).search_experiments()
    elif sys.argv[1] == "registry-open":
        from mm_platform.stores.registry import ModelRegistry
        ModelRegistry(sys.argv[2], sys.argv[3], "e")
    else:
        from mm_platform.cli import main
        sys.exit(main(sys.argv[1:]))
    """
)

REGISTER = textwrap.dedent(
    """
    import sys
    from mm_platform.stores.registry import ModelRegistry
    uri, root, item = sys.argv[1], sys.argv[2], sys.argv[3]
    if len(sys.argv) > 4:  # start together: both processes wait for the test's go
        print("ready", flush=True)
        sys.stdin.readline()
    reg = ModelRegistry(uri, root, "e")
    tags = {"dataset": "retail", "series_id": f"store=1,item={item}", "key.store": "1", "key.item": item}
    reg.register_many([(f"retail.store_1.item_{item}", b"{}", tags)], f"r{item}", {}, alias="production")
    """
)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MM_FAULT_POINT", "MM_TEST_KILL_DDL")}
    return {**env, **extra}


def _kill_mlflow_creation(uri: str, nth: int) -> None:
    """Leave what a process killed inside MLflow's schema creation leaves (the original defect)."""
    name = Path(uri.removeprefix("sqlite:///")).name
    out = subprocess.run([sys.executable, "-c", DDL_KILLER, "mlflow-open", uri], env=_env(MM_TEST_KILL_DDL=f"{name}:{nth}"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr[-2000:]


def _register_in_subprocess(uri: str, root: str, item: int, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", REGISTER, uri, root, str(item)], env=_env(**env),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("nth, original_error", [(85, "table logged_models already exists"),
                                                  (266, "duplicate column name: target_value")])
def test_a_registry_left_half_created_by_a_kill_inside_mlflows_creation_is_recreated(tmp_path, nth, original_error):
    from mm_platform.stores.registry import ModelRegistry

    uri = f"sqlite:///{tmp_path}/mlflow/training.db"
    _kill_mlflow_creation(uri, nth)
    # Before: every later open failed with `original_error`; now the empty half-created
    # database is replaced by a complete one and registering works.
    reg = ModelRegistry(uri, str(tmp_path / "artifacts"), "e")
    tags = {"dataset": "retail", "series_id": "store=1,item=1"}
    reg.register_many([("retail.store_1.item_1", b"{}", tags)], "r", {}, alias="production")
    assert [m.version for m in reg.search("retail")] == [1]
    assert _register_in_subprocess(uri, str(tmp_path / "artifacts"), 2).returncode == 0  # and in a new process
    assert len(ModelRegistry(uri, str(tmp_path / "artifacts"), "e").search("retail")) == 2


def test_a_kill_inside_the_registry_creation_leaves_no_registry_and_the_next_open_creates_it(tmp_path):
    from mm_platform.stores.registry import SCHEMA_FAULT_POINT, ModelRegistry, schema_state

    uri = f"sqlite:///{tmp_path}/mlflow/production.db"
    killed = _register_in_subprocess(uri, str(tmp_path / "art"), 1, MM_FAULT_POINT=SCHEMA_FAULT_POINT)
    assert killed.returncode == -9
    folder = tmp_path / "mlflow"
    assert not (folder / "production.db").exists() and schema_state(uri).status == "missing"
    assert [p.name for p in folder.glob(".production.db.creating-*")]  # the killed creation's temporary file
    assert _register_in_subprocess(uri, str(tmp_path / "art"), 1).returncode == 0
    assert schema_state(uri).status == "ok" and not list(folder.glob(".production.db.creating-*"))
    assert len(ModelRegistry(uri, str(tmp_path / "art"), "e").search("retail")) == 1


def test_an_outdated_sqlite_registry_with_models_is_reported_and_doctor_repair_migrates_it(tmp_path):
    from mm_platform.stores.registry import ModelRegistry, schema_state

    path = write_config(tmp_path)
    cfg = load_config(path)
    write_sales(cfg.source.url, "sales", 1, 2, 120, seed=1)
    uri = cfg.storage.training_registry_uri
    # (Processes of their own: one holding the database open would keep the old file after the swap.)
    assert _register_in_subprocess(uri, str(tmp_path / "art"), 1).returncode == 0
    # As an older MLflow left it: MLflow's own downgrade of its newest migration.
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config

    command.downgrade(_get_alembic_config(uri), "-1")
    assert schema_state(uri).status == "outdated"
    refused = _register_in_subprocess(uri, str(tmp_path / "art"), 2)
    assert refused.returncode == 1 and "MLflow schema of an older version" in refused.stderr and "doctor --repair" in refused.stderr
    doctor = _cli("doctor", "--config", str(path))
    assert doctor.returncode == 2 and "PROBLEM  training registry" in doctor.stdout and "doctor --repair" in doctor.stdout
    repaired = _cli("doctor", "--config", str(path), "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert schema_state(uri).status == "ok"
    assert _register_in_subprocess(uri, str(tmp_path / "art"), 2).returncode == 0
    assert len(ModelRegistry(uri, str(tmp_path / "art"), "e").search("retail")) == 2  # the first kept


def test_two_processes_creating_the_same_new_registry_at_once_both_succeed(tmp_path):
    from mm_platform.stores.registry import ModelRegistry

    uri = f"sqlite:///{tmp_path}/mlflow/training.db"
    procs = [
        subprocess.Popen([sys.executable, "-c", REGISTER, uri, str(tmp_path / "art"), str(i), "together"], env=_env(),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in (1, 2)
    ]
    for p in procs:  # both have imported everything and wait
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], [err[-1500:] for _, err in results]
    found = ModelRegistry(uri, str(tmp_path / "art"), "e").search("retail")
    assert sorted(m.name for m in found) == ["retail.store_1.item_1", "retail.store_1.item_2"]


def test_postgresql_registry_creation_killed_mid_migration_is_resumed_by_two_processes_at_once(tmp_path):
    from mm_platform.stores.registry import schema_state
    from mm_platform_tests.test_prod_support import PG_SERVER, pg_database, require_postgres

    require_postgres()
    with pg_database("mm_home_safety") as name:
        uri = f"{PG_SERVER}/{name}"
        out = subprocess.run([sys.executable, "-c", DDL_KILLER, "registry-open", uri, str(tmp_path / "art")],
                             env=_env(MM_TEST_KILL_DDL=f"{name}:150"), capture_output=True, text=True, timeout=300)
        assert out.returncode == -9, out.stderr[-2000:]
        assert schema_state(uri).status == "interrupted"  # MLflow's first tables, its migrations rolled back
        procs = [
            subprocess.Popen([sys.executable, "-c", REGISTER, uri, str(tmp_path / "art"), str(i), "together"], env=_env(),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in (1, 2)
        ]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        assert [rc for rc, _ in results] == [0, 0], [err[-1500:] for _, err in results]
        assert schema_state(uri).status == "ok"


def _cli(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mm_platform.cli", *args], env=env or _env(), capture_output=True,
                          text=True, timeout=timeout)


def test_doctor_says_what_is_wrong_with_a_home_and_how_to_repair_it(tmp_path):
    from mm_platform.stores.registry import ModelRegistry

    path = write_config(tmp_path)
    cfg = load_config(path)
    write_sales(cfg.source.url, "sales", 1, 2, 120, seed=1)
    new = _cli("doctor", "--config", str(path))
    assert new.returncode == 0, new.stdout + new.stderr
    assert "healthy" in new.stdout and "not created yet" in new.stdout
    assert not (tmp_path / "mlflow").exists() and not (tmp_path / "warehouse.db").exists()  # checking creates nothing

    ModelRegistry(cfg.storage.production_registry_uri, cfg.storage.production_artifact_root, "p")
    _kill_mlflow_creation(cfg.storage.training_registry_uri, 85)
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "retail.lock").write_text(json.dumps({"run_date": "2025-12-31", "pid": 4242, "host": "h"}))
    broken = _cli("doctor", "--config", str(path))
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    lines = broken.stdout.splitlines()
    training = next(line for line in lines if line.startswith("PROBLEM  training registry"))
    assert "interrupted" in training and "repair:" in training and "recreates it" in training
    assert any(line.startswith("ok       production registry") for line in lines)
    lock = next(line for line in lines if line.startswith("PROBLEM  lock"))
    assert "pid 4242" in lock and "2025-12-31" in lock and "--run-date 2025-12-31" in lock
    assert lines[-1].startswith("2 problem(s)")

    repaired = _cli("doctor", "--config", str(path), "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert _cli("doctor", "--config", str(path)).returncode == 0

    (tmp_path / "source.db").unlink()
    missing = _cli("doctor", "--config", str(path))
    assert missing.returncode == 2 and "PROBLEM  source" in missing.stdout and "does not exist" in missing.stdout


def test_a_run_on_a_home_another_run_holds_says_so_in_one_line_and_exits_2(tmp_path):
    from mm_platform.stores.home import hold_run_lock

    path = write_config(tmp_path)
    cfg = load_config(path)
    write_sales(cfg.source.url, "sales", 1, 2, 120, seed=1)
    with hold_run_lock(cfg, "2025-12-30"):
        out = _cli("run", "--config", str(path))
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "another run is in progress" in lines[0], lines
    assert str(tmp_path) in lines[0] and "run date 2025-12-30" in lines[0] and f"pid {os.getpid()}" in lines[0]
    assert not (tmp_path / "mlflow").exists() and not (tmp_path / "lake").exists()  # nothing touched
    assert (tmp_path / "locks" / "retail.lock").read_text() == ""  # released normally: no holder left


# --- whole runs killed at the first registry creation ---------------------------------------------


def _small_home(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    # Relaxed promotion so every trained series is promoted and scored (predictions to compare).
    path = write_config(home, promotion={"max_wape": None, "beats_seasonal_naive": False})
    write_sales(load_config(path).source.url, "sales", 2, 3, 400, seed=5, future_days=28)
    return path


def _predictions(path: Path) -> pd.DataFrame:
    con = sqlite3.connect(load_config(path).storage.warehouse_url.removeprefix("sqlite:///"))
    try:
        rows = pd.read_sql("SELECT * FROM predictions", con).drop(columns=["scoring_run_id"])
    finally:
        con.close()
    return rows.sort_values(["series_id", "ds"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    path = _small_home(tmp_path_factory.mktemp("clean"))
    out = _cli("run", "--config", str(path))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _predictions(path)
    assert len(rows) > 0
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["training.db:85", "production.db:85", "fault_point"])
def test_a_first_run_killed_while_creating_a_registry_leaves_a_home_the_next_run_completes(tmp_path, clean_run, kill):
    path = _small_home(tmp_path)
    cfg = load_config(path)
    uris = [cfg.storage.training_registry_uri, cfg.storage.production_registry_uri]
    run = [sys.executable, "-c", DDL_KILLER, "run", "--config", str(path)]
    if kill == "fault_point":
        from mm_platform.stores.registry import SCHEMA_FAULT_POINT, schema_state

        # The platform's own fault point: killed at the first registry creation (training), then
        # at the production registry's (the training registry is then created and complete).
        for point, states in ((SCHEMA_FAULT_POINT, ["missing", "missing"]),
                              (f"{SCHEMA_FAULT_POINT}:production.db", ["ok", "missing"])):
            out = subprocess.run(run, env=_env(MM_FAULT_POINT=point, MM_TEST_KILL_DDL="none:0"),
                                 capture_output=True, text=True, timeout=900)
            assert out.returncode == -9, out.stderr[-3000:]
            assert [schema_state(u).status for u in uris] == states
    else:
        # Killed in the middle of MLflow's migrations of that registry: what broke homes for good.
        out = subprocess.run(run, env=_env(MM_TEST_KILL_DDL=kill), capture_output=True, text=True, timeout=900)
        assert out.returncode == -9, out.stderr[-3000:]
    rerun = _cli("run", "--config", str(path))  # before: `table logged_models already exists`, at every rerun
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    from mm_platform.stores.registry import schema_state

    assert [schema_state(u).status for u in uris] == ["ok", "ok"]
    pd.testing.assert_frame_equal(_predictions(path), clean_run)
    assert _cli("doctor", "--config", str(path)).returncode == 0


@pytest.mark.slow
def test_two_first_runs_at_once_one_runs_the_other_says_the_home_is_held(tmp_path, clean_run):
    path = _small_home(tmp_path)
    cmd = [sys.executable, "-m", "mm_platform.cli", "run", "--config", str(path)]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=900), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    _, _, refused = next(r for r in results if r[0] == 2)
    line = refused.strip()
    assert "\n" not in line and "another run is in progress" in line and str(tmp_path) in line
    winner = next(p.pid for p, r in zip(procs, results, strict=True) if r[0] == 0)
    assert f"pid {winner}" in line and "run date 2025-12-31" in line
    pd.testing.assert_frame_equal(_predictions(path), clean_run)
    again = _cli("run", "--config", str(path))
    assert again.returncode == 0, again.stderr[-3000:]
    pd.testing.assert_frame_equal(_predictions(path), clean_run)
