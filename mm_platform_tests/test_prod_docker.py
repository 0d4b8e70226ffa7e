"""The container deployment (``docker/``) and the production Dagster instance config
(``deploy/dagster.yaml``), checked without a Docker engine: every compose service's command
exists and parses with that program's own CLI, every Dockerfile, copied source and mounted
file exists, and the configs the containers read are valid and hold no secrets."""

from __future__ import annotations

import importlib
import re
import shlex
import zipfile
from importlib.metadata import entry_points

import click
import pytest
import yaml

from mm_platform.config import load_config
from mm_platform_tests.test_prod_support import ROOT, VENV_BIN, pyspark_home

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
SERVICES = {
    "postgres", "mlflow-training", "mlflow-production", "code-location", "dagster-webserver", "dagster-daemon",
    "scoring", "spark-master", "spark-worker",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # merge keys (<<: *anchor) resolved


def _command(service: dict) -> list[str]:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if value:
            parts += shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    return parts


def _host_path(service: dict, arg: str) -> str:
    """A container path that is a bind mount, as the host file it mounts (so options that must
    name an existing file are checked against the file in this repository)."""
    for vol in service.get("volumes", []):
        src, target = vol.split(":")[:2]
        if src.startswith(".") and (arg == target or arg.startswith(target + "/")):
            return str((DOCKER / src).resolve()) + arg[len(target):]
    return arg


def _click_command(program: str) -> click.Command | None:
    """The click command behind a console script, if it is a click program."""
    eps = list(entry_points(group="console_scripts", name=program))  # mlflow is listed by mlflow-skinny too
    if not eps:
        return None
    ep = eps[0]
    obj = ep.load()
    if isinstance(obj, click.Command):
        return obj
    cli = getattr(importlib.import_module(ep.module), "cli", None)
    return cli if isinstance(cli, click.Command) else None


def _parse_click(cmd: click.Command, args: list[str], prog: str) -> None:
    ctx = click.Context(cmd, info_name=prog)
    while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
        sub = cmd.get_command(ctx, args[0])
        assert sub is not None, f"{prog}: no subcommand {args[0]!r}"
        prog, cmd, args = f"{prog} {args[0]}", sub, args[1:]
        ctx = click.Context(cmd, info_name=prog, parent=ctx)
    cmd.make_context(prog, list(args), parent=ctx.parent)  # raises click.UsageError on bad options


def _class_in_spark_jars(cls: str) -> bool:
    entry = cls.replace(".", "/") + ".class"
    for jar in (pyspark_home() / "jars").glob("spark-*.jar"):
        with zipfile.ZipFile(jar) as z:
            if entry in z.namelist():
                return True
    return False


def test_compose_has_every_service(compose):
    assert set(compose["services"]) == SERVICES
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if not src.startswith((".", "/")):
                assert src in declared, f"{name}: named volume {src} not declared"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_command_exists_and_parses(compose, name):
    svc = compose["services"][name]
    cmd = _command(svc)
    if not cmd:
        assert "image" in svc and "build" not in svc, f"{name}: no command, so it must be a stock image"
        return
    program, args = cmd[0], [_host_path(svc, a) for a in cmd[1:]]
    if program == "spark-class":
        assert (VENV_BIN / "spark-class").exists() and (pyspark_home() / "bin" / "spark-class").exists()
        assert _class_in_spark_jars(args[0]), f"{args[0]} is not in pyspark's jars"
        return
    assert (VENV_BIN / program).exists(), f"{name}: {program} is not a console script of this environment"
    if program == "mm-platform":
        from mm_platform.cli import build_parser

        parsed = build_parser().parse_args(args)
        assert parsed.command == args[0]
        return
    click_cmd = _click_command(program)
    assert click_cmd is not None, f"{name}: {program} is not a click program"
    _parse_click(click_cmd, args, program)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_referenced_files_exist(compose, name):
    svc = compose["services"][name]
    build = svc.get("build")
    if build:
        context = (DOCKER / (build["context"] if isinstance(build, dict) else build)).resolve()
        dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for line in dockerfile.read_text().splitlines():
            m = re.match(r"^\s*(COPY|ADD)\s+(?!--from)(.+)$", line)
            if m:
                *sources, _dest = m.group(2).split()
                for src in sources:
                    assert (context / src).exists(), f"{name}: {dockerfile.name} copies missing {src}"
    for vol in svc.get("volumes", []):
        src = vol.split(":", 1)[0]
        if src.startswith("."):
            assert (DOCKER / src).resolve().exists(), f"{name}: mounted {src} missing"


def test_dagster_workspace_points_at_the_code_location(compose):
    ws = yaml.safe_load((DOCKER / "workspace.yaml").read_text())
    (entry,) = ws["load_from"]
    grpc = entry["grpc_server"]
    code = _command(compose["services"]["code-location"])
    assert grpc["host"] == "code-location" and str(grpc["port"]) == code[code.index("-p") + 1]
    assert code[:3] == ["dagster", "api", "grpc"] and "mm_platform.definitions" in code
    for name in ("dagster-webserver", "dagster-daemon"):
        assert "/opt/dagster/app/workspace.yaml" in _command(compose["services"][name])


def test_container_dataset_config_is_valid_and_has_no_secrets(monkeypatch):
    text = (DOCKER / "config" / "retail.yaml").read_text()
    assert "${POSTGRES_PASSWORD}" in text
    for k, v in {"MM_SOURCE_URL": "sqlite:////lake/source.db", "POSTGRES_PASSWORD": "s3cret"}.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(DOCKER / "config" / "retail.yaml")
    assert cfg.storage.warehouse_url.startswith("postgresql+psycopg2://mm:s3cret@postgres")
    assert cfg.storage.training_registry_uri == "http://mlflow-training:5000"
    assert cfg.spark.master.startswith("spark://")
    compose_text = COMPOSE.read_text()
    literal = re.search(r"(?im)^\s*\w*password\w*:\s*(?!\$\{)\S", compose_text)
    assert literal is None, f"a literal password in compose.yaml: {literal and literal.group(0)}"


def test_deploy_dagster_yaml_reads_everything_from_env(tmp_path, monkeypatch):
    from dagster._core.instance.config import dagster_instance_config

    path = ROOT / "deploy" / "dagster.yaml"
    storage = yaml.safe_load(path.read_text())["storage"]["postgres"]["postgres_db"]
    assert storage == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"},
        "scheme": "postgresql+psycopg2",
    }
    (tmp_path / "dagster.yaml").write_text(path.read_text())
    config, _ = dagster_instance_config(str(tmp_path))  # validates against Dagster's instance schema
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
