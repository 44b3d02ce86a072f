"""Small Java classes the Flink JVMs need so that they listen on ``[stack] bind_host`` only.

Beam 2.70 builds its gRPC servers with ``NettyServerBuilder.forPort(port)``,
which binds the wildcard address whatever host it was given: the job API
(``--job-host`` only names the URL), the artifact service, every job's Fn API
servers (control, data, state, logging, provisioning) and the expansion
service's ``main`` (which takes a port only). No Beam or Flink option changes
that. The sources in ``runners/stack/java/`` fix it:

* ``org/apache/beam/sdk/fn/server/ServerFactory.java`` replaces Beam's class of
  that name (same public API) and binds the address it is given: the
  configured host for the job and artifact services, the loopback address for
  the servers Beam allocates itself. It works by being ahead of the Beam jars
  on the classpath (:func:`classpath`).
* ``dcmms/BoundExpansionService.java`` (:data:`EXPANSION_MAIN`) serves the
  expansion service on ``<host> <port>``.

:func:`compile_patches` compiles them with ``javac`` against the Flink jars
into ``<jar cache>/flink-patches/<hash of the sources>`` once; later calls
reuse it. Bound to Beam 2.70.0 (the ``vendor.grpc.v1p69p0`` package names): a
Beam upgrade must re-check ServerFactory's API (``javap``) and recompile.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from runners.stack.spec import StackPaths

__all__ = ["EXPANSION_MAIN", "SOURCE_DIR", "classpath", "compile_patches", "patch_dir"]

_LOGGER = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parent / "java"
EXPANSION_MAIN = "dcmms.BoundExpansionService"
_JDK_HINT = "install a JDK 17 with javac: apt-get install openjdk-17-jdk-headless"


def _sources() -> list[Path]:
    return sorted(SOURCE_DIR.rglob("*.java"))


def patch_dir(paths: StackPaths) -> Path:
    """Where the compiled classes of the current sources live (may not exist yet)."""
    digest = hashlib.sha256()
    for src in _sources():
        digest.update(str(src.relative_to(SOURCE_DIR)).encode())
        digest.update(src.read_bytes())
    return paths.jars("flink-patches") / digest.hexdigest()[:16]


def classpath(paths: StackPaths) -> str:
    """The Flink JVMs' ``-cp``: the patch classes first, then the Flink jars."""
    return f"{patch_dir(paths)}:{paths.jars('flink')}/*"


def compile_patches(paths: StackPaths) -> Path:
    """Compile the sources into :func:`patch_dir` unless already there; return that dir."""
    out = patch_dir(paths)
    if (out / ".complete").exists():
        return out
    javac = shutil.which("javac")
    if javac is None:
        raise RuntimeError(f"javac not found (needed to build {SOURCE_DIR}): {_JDK_HINT}")
    # Stacks of other profiles share the jar cache: build aside, then rename into place.
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    if out.exists():  # left half-built by an interrupted run
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _LOGGER.info("compiling the Flink bind patches (%s) into %s", SOURCE_DIR, out)
    done = subprocess.run(
        [javac, "-nowarn", "-d", str(tmp), "-cp", f"{paths.jars('flink')}/*",
         *map(str, _sources())], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"javac failed on {SOURCE_DIR} (Flink jars in {paths.jars('flink')}; "
                           f"run `make jars`?):\n{done.stderr[-2000:]}")
    (tmp / ".complete").touch()
    try:
        tmp.rename(out)
    except OSError:  # another stack finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / ".complete").exists():
            raise
    return out
