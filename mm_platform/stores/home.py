"""A home (``$MM_HOME``): the lock that keeps two runs of a dataset apart, and ``mm-platform doctor``.

The run lock is ``<home>/locks/<dataset>.lock``, held with ``fcntl.flock`` for the whole run (all
run dates: runs of different dates share the lake watermark and the registries). The kernel
releases it when the process ends, however it ends; the file keeps the holder's pid, host and run
date so a second run can name it, and a run that ends normally clears them, so a lock file that
still names a holder nobody holds is a run that was killed.

The home is the folder that holds the lake when the lake is local (``$MM_HOME/lake`` by default,
so the home is ``$MM_HOME``); with a remote lake it is ``$MM_HOME``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from datetime import date
from pathlib import Path

from mm_platform.config import ConfigError, DatasetConfig, load_config, mm_home
from mm_platform.core.errors import UserError, one_line


class RunInProgressError(UserError):
    """Another run holds the home's lock for this dataset."""


def home_dir(cfg: DatasetConfig) -> Path:
    lake = cfg.storage.lake_url
    if lake.startswith("file://"):
        lake = lake.removeprefix("file://")
    if "://" not in lake:
        return Path(lake).resolve().parent
    return mm_home()


def lock_path(cfg: DatasetConfig) -> Path:
    return home_dir(cfg) / "locks" / f"{cfg.name}.lock"


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that has not written its details yet"
    return (f"run date {holder.get('run_date', '?')}, pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}")


class RunLock:
    """The home's lock for one dataset, held until ``release()`` or until the object (or the
    process) goes away: closing the descriptor releases an flock."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # a normal end: no holder left to report as killed
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def hold_run_lock(cfg: DatasetConfig, run_date: date | str, wait: bool = False) -> RunLock:
    """Take the home's lock for ``cfg``'s dataset. Another run holding it: ``RunInProgressError``
    naming the home, its run date and pid/host, or (``wait``) block until it ends."""
    path = lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise RunInProgressError(
                    f"another run is in progress on home {home_dir(cfg)} for dataset {cfg.name} ({_describe(holder)}); "
                    f"wait for it to finish or pass --wait (lock {path})"
                ) from None
            print(f"mm-platform: waiting for the run in progress on home {home_dir(cfg)} ({_describe(holder)})",
                  file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"dataset": cfg.name, "run_date": str(run_date), "pid": os.getpid(),
                                 "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return RunLock(fd, path)


# -- doctor ----------------------------------------------------------------------------------------


class _Report:
    def __init__(self) -> None:
        self.problems = 0

    def ok(self, what: str, detail: str) -> None:
        print(f"ok       {what}: {detail}")

    def note(self, what: str, detail: str) -> None:
        print(f"note     {what}: {detail}")

    def problem(self, what: str, detail: str, repair: str) -> None:
        self.problems += 1
        print(f"PROBLEM  {what}: {detail}" + (f" -- repair: {repair}" if repair else ""))


def doctor(cfg: DatasetConfig, repair: bool = False) -> int:
    """Check a home; print one line per check; 0 if healthy, 2 otherwise. ``repair`` fixes what
    can be fixed without losing anything (interrupted or outdated SQLite registries, leftover
    temporary files, the note a killed run leaves in its lock file)."""
    from mm_platform.stores import registry

    out = _Report()
    home = home_dir(cfg)
    out.ok("home", str(home))
    _check_source(cfg, out)
    _check_lake(cfg, out, repair)
    for which, uri in (("training registry", cfg.storage.training_registry_uri),
                       ("production registry", cfg.storage.production_registry_uri)):
        _check_registry(which, uri, out, repair, registry)
    _check_warehouse(cfg, out)
    _check_locks(cfg, out, repair)
    print(f"{'healthy' if not out.problems else f'{out.problems} problem(s)'}: home {home}, dataset {cfg.name}")
    return 0 if not out.problems else 2


def _check_source(cfg: DatasetConfig, out: _Report) -> None:
    from mm_platform.stores.sql import check_source

    c = cfg.columns
    try:
        check_source(cfg.source.url, cfg.source.table, [c.date, c.target, *c.keys, *c.regressors])
    except Exception as err:  # noqa: BLE001 - every failure is reported, not raised
        out.problem("source", one_line(err), "fix source.url / source.table / columns in the config, "
                    "or `mm-platform generate` for sample data")
        return
    out.ok("source", f"table {cfg.source.table} with its configured columns")


def _check_lake(cfg: DatasetConfig, out: _Report, repair: bool) -> None:
    from mm_platform.stores.lake import Lake

    table = cfg.source.table
    try:
        lake = Lake(cfg.storage.lake_url)
        manifest = lake.read_manifest(table)
        missing = [rel for rel in manifest["files"].values() if not lake.fs.exists(lake.path("raw", table, rel))]
    except Exception as err:  # noqa: BLE001
        out.problem("lake", f"manifest of table {table} at {cfg.storage.lake_url} is unreadable: {one_line(err)[:300]}",
                    "restore the lake folder from a backup, or move it aside and rerun to copy the source again")
        return
    if missing:
        out.problem("lake", f"table {table}: {len(missing)} file(s) named by the manifest are missing, e.g. {missing[0]}",
                    "restore them from a backup, or move the lake aside and rerun to copy the source again")
    elif not manifest["files"]:
        out.ok("lake", f"table {table} is empty (the first run copies the source)")
    else:
        out.ok("lake", f"table {table}: {len(manifest['files'])} month file(s), {manifest.get('rows', '?')} rows, "
               f"watermark {manifest.get('watermark')}")
    if lake.is_local():
        folder = Path(lake.path("raw", table))
        leftovers = list(folder.glob(".*_manifest.json.*")) if folder.exists() else []
        if leftovers:  # a manifest swap that was killed: harmless, the old manifest is in force
            if repair:
                for f in leftovers:
                    f.unlink(missing_ok=True)
                out.note("lake", f"removed {len(leftovers)} temporary manifest(s) left by a killed write")
            else:
                out.note("lake", f"{len(leftovers)} temporary manifest(s) left by a killed write (harmless; "
                         "`mm-platform doctor --repair` removes them)")


def _check_registry(which: str, uri: str, out: _Report, repair: bool, registry) -> None:
    state = registry.schema_state(uri)
    shown = registry._redacted(uri)
    if repair and state.status in ("interrupted", "outdated") and registry._backend(uri) == "sqlite":
        try:
            registry.ensure_schema(uri, migrate=True)
            state = registry.schema_state(uri)
            out.note(which, f"{shown}: repaired")
        except Exception as err:  # noqa: BLE001
            out.problem(which, f"{shown}: repair failed: {one_line(err)[:300]}", state.repair)
            return
    path = registry._sqlite_path(uri) if registry._backend(uri) == "sqlite" else None
    leftovers = list(path.parent.glob(f".{path.name}.creating-*")) if path is not None and path.parent.exists() else []
    if leftovers:
        if repair and _unlocked(path.with_name(path.name + ".lock")):
            for f in leftovers:
                f.unlink(missing_ok=True)
            out.note(which, f"removed {len(leftovers)} temporary file(s) of a killed creation")
        else:
            out.note(which, f"{len(leftovers)} temporary file(s) of a killed creation (harmless; the next creation or "
                     "`mm-platform doctor --repair` removes them)")
    if state.healthy:
        out.ok(which, f"{shown}: {state.detail}")
    else:
        out.problem(which, f"{shown}: {state.detail}", state.repair)


def _unlocked(path: Path) -> bool:
    """True if nobody holds the flock on ``path`` (a creation in progress holds it)."""
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _check_warehouse(cfg: DatasetConfig, out: _Report) -> None:
    import sqlalchemy as sa

    url = cfg.storage.warehouse_url
    try:
        parsed = sa.make_url(url)
        shown = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
            out.ok("warehouse", f"{shown}: not created yet (the first run creates it)")
            return
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
                tables = sa.inspect(conn).get_table_names()
        finally:
            engine.dispose()
    except Exception as err:  # noqa: BLE001
        out.problem("warehouse", f"cannot open {url if 'shown' not in locals() else shown}: {one_line(err)[:300]}",
                    "check storage.warehouse_url, the server and the credentials")
        return
    out.ok("warehouse", f"{shown}: reachable, {len(tables)} table(s)")


def _check_locks(cfg: DatasetConfig, out: _Report, repair: bool) -> None:
    folder = lock_path(cfg).parent
    for path in sorted(folder.glob("*.lock")) if folder.exists() else []:
        fd = os.open(path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                out.note("lock", f"{path.name}: a run is in progress ({_describe(_holder(fd))})")
                continue
            holder = _holder(fd)
            if not holder:
                out.ok("lock", f"{path.name}: free")
                continue
            what = f"{path.name}: the run of {_describe(holder)} ended without finishing (killed?)"
            if repair:
                os.ftruncate(fd, 0)
                out.note("lock", f"{what}; note cleared: rerun `mm-platform run --run-date {holder.get('run_date')}`")
            else:
                out.problem("lock", what, f"rerun `mm-platform run --run-date {holder.get('run_date', '<date>')}` "
                            "(a rerun is safe); `mm-platform doctor --repair` clears this note")
        finally:
            os.close(fd)


def cmd_doctor(args) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        print(f"PROBLEM  config: {one_line(err)} -- repair: fix the config file")
        print("1 problem(s): the config does not load")
        return 2
    return doctor(cfg, repair=args.repair)


def add_commands(subparsers) -> None:
    d = subparsers.add_parser("doctor", help="check a home (config, source, lake, registries, warehouse, locks) "
                              "and say what is wrong and how to repair it; exit 0 when healthy, 2 otherwise")
    d.add_argument("--config", help="dataset config YAML (default: $MM_CONFIG or the packaged retail example)")
    d.add_argument("--repair", action="store_true",
                   help="also repair what loses nothing: interrupted or outdated SQLite registries, "
                        "temporary files of killed writes, a killed run's note in its lock file")
    d.set_defaults(func=cmd_doctor)
