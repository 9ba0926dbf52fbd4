"""Real Milvus server for tests and benchmarks.

Runs the Milvus 2.3.5 standalone binary from the PyPI package ``milvus``, which
``scripts/install-milvus-server.sh`` installs into ``.venv-milvus-server/``. That
package pins pymilvus < 2.4, so it lives apart from the project's virtual
environment. Every port the server opens is chosen free at start time, so several
servers can run side by side and none needs 19530.

Tests take the session fixture ``milvus_server_uri`` and carry the ``server`` marker:

    @pytest.mark.server
    def test_store_search_on_server(milvus_server_uri: str) -> None:
        client = MilvusClient(uri=milvus_server_uri)

Load the fixture from ``conftest.py`` with either
``pytest_plugins = ["tests.milvus_server"]`` or
``from tests.milvus_server import milvus_server_uri  # noqa: F401``. The
``server`` marker is registered under ``[tool.pytest.ini_options]`` in
pyproject.toml, so ``pytest -m "not server"`` leaves these tests out.

Benchmarks call ``start_milvus_server(data_dir)`` and ``.stop()`` themselves.

Set ``SEMSEARCH_MILVUS_SERVER_BIN`` to the ``milvus-server`` script of another
virtual environment that has ``milvus==2.3.5`` installed to use that one instead.

NOTE: Milvus 2.3.5 binds its gRPC, metrics and internal ports on all interfaces.
Its ``ip`` settings only choose the address it advertises. Only the embedded etcd
binds to 127.0.0.1 here, and clients connect through 127.0.0.1.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-milvus-server.sh"
DEFAULT_SERVER_BIN = REPO_ROOT / ".venv-milvus-server" / "bin" / "milvus-server"
SERVER_BIN_ENV = "SEMSEARCH_MILVUS_SERVER_BIN"

START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
INSTALL_TIMEOUT_S = 900.0
LOG_TAIL_LINES = 40

# Port settings of the launcher's config template in milvus 2.3.5
# (milvus/data/config.yaml.template), each set to a free port at start time.
PORT_SETTINGS = (
    "proxy_port",
    "proxy_internal_port",
    "root_coord_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
    "etcd_port",
)

# Runs in the server's virtual environment. It writes configs/milvus.yaml from the
# package template, failing if a requested port is taken, and unpacks the binary
# into the home directory unless the .md5 files show it is already there.
PREPARE_SCRIPT = """
import json, sys
import milvus
data_dir, home, ports = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
config = milvus.MilvusServerConfig(data_dir=data_dir, **ports)
config.resolve()
milvus._initialize_data_files(home)
"""


class MilvusServerError(RuntimeError):
    """Failure to install or start the test Milvus server."""


@dataclass
class MilvusServerProcess:
    """A running Milvus standalone server and the files it writes."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    log_path: Path
    _log_file: IO[bytes] = field(repr=False)

    @property
    def uri(self) -> str:
        """URI for ``pymilvus.MilvusClient``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last lines of the server's stdout and stderr."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server with SIGTERM, then SIGKILL after ``STOP_GRACE_S``.

        Calling it again is a no-op. The data directory is left in place.
        """
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                # With loaded collections, 2.3.5 has been seen to hang in shutdown
                # for more than 20 s. The data is disposable, so kill it.
                self.process.kill()
                self.process.wait()
        self._log_file.close()


def find_server_bin() -> Path:
    """Return the ``milvus-server`` script, running the install script if needed.

    Raises:
        MilvusServerError: the override path does not exist, or the install
            script failed.
    """
    override = os.environ.get(SERVER_BIN_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise MilvusServerError(
                f"{SERVER_BIN_ENV}={override!r} is not a file. Point it at the "
                "milvus-server script of a virtual environment with milvus==2.3.5."
            )
        return path

    _run_install_script()
    return DEFAULT_SERVER_BIN


def _run_install_script() -> None:
    # The script returns at once when a previous run passed its start check.
    try:
        result = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise MilvusServerError(
            f"{INSTALL_SCRIPT} timed out after {INSTALL_TIMEOUT_S:.0f} s."
        ) from exc

    if result.returncode != 0 or not DEFAULT_SERVER_BIN.is_file():
        raise MilvusServerError(
            f"{INSTALL_SCRIPT} failed with exit status {result.returncode}, so the "
            f"server tests cannot run. Its output:\n{result.stdout}{result.stderr}\n"
            f"Run it by hand, or set {SERVER_BIN_ENV} to an installed milvus-server."
        )


def start_milvus_server(
    data_dir: Path,
    port: int | None = None,
    *,
    server_bin: Path | None = None,
    timeout: float = START_TIMEOUT_S,
) -> MilvusServerProcess:
    """Start a Milvus 2.3.5 standalone server and wait until it serves requests.

    Args:
        data_dir: directory for the server's config, logs and data. It is created if
            missing and is not removed by ``stop()``.
        port: gRPC port of the proxy, or None for a free one.
        server_bin: ``milvus-server`` script. Defaults to ``find_server_bin()``.
        timeout: seconds to wait until ``MilvusClient.list_collections()`` succeeds.

    Raises:
        MilvusServerError: preparing the config failed, the server exited early, or
            ``list_collections()`` did not succeed within ``timeout``.
    """
    server_bin = server_bin or find_server_bin()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    home = server_bin.parent.parent / "milvus-home"

    ports = _free_ports(len(PORT_SETTINGS) + 2)
    settings = dict(zip(PORT_SETTINGS, ports))
    if port is not None:
        settings["proxy_port"] = port
    etcd_peer_port, metrics_port = ports[-2:]

    _prepare_data_dir(server_bin, data_dir, home, settings)
    etcd_config = _write_etcd_config(data_dir, settings["etcd_port"], etcd_peer_port)
    server = _launch(home, data_dir, settings["proxy_port"], metrics_port, etcd_config)
    # Stops a server that a benchmark leaves running when the interpreter exits.
    atexit.register(server.stop)

    try:
        _wait_until_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is chosen, so the ports are distinct.
    # Another process may still take one before the server binds it. The prepare
    # step or the server start then fails with a bind error.
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _prepare_data_dir(
    server_bin: Path, data_dir: Path, home: Path, settings: dict[str, int]
) -> None:
    # The console script sits next to the interpreter of its virtual environment.
    python = server_bin.parent / "python"
    result = subprocess.run(
        [
            str(python),
            "-c",
            PREPARE_SCRIPT,
            str(data_dir),
            str(home),
            json.dumps(settings),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise MilvusServerError(
            f"Preparing the Milvus config in {str(data_dir)!r} with {str(python)!r} "
            f"failed:\n{result.stderr.strip()}"
        )


def _write_etcd_config(data_dir: Path, client_port: int, peer_port: int) -> Path:
    # Without a config file the embedded etcd always listens on 2379 and 2380, so a
    # second server on the same machine fails at start with a nil-pointer panic.
    path = data_dir / "configs" / "embed-etcd.yaml"
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    path.write_text(
        f"listen-client-urls: {client_url}\n"
        f"advertise-client-urls: {client_url}\n"
        f"listen-peer-urls: {peer_url}\n"
        f"initial-advertise-peer-urls: {peer_url}\n"
        f"initial-cluster: default={peer_url}\n",
        encoding="utf-8",
    )
    return path


def _launch(
    home: Path, data_dir: Path, port: int, metrics_port: int, etcd_config: Path
) -> MilvusServerProcess:
    # The same environment the package's launcher sets, plus ETCD_CONFIG_PATH and
    # MILVUSCONF, which Milvus reads as overrides of etcd.config.path and the
    # config directory.
    binary = home / "bin" / "milvus"
    env = dict(
        os.environ,
        DEPLOY_MODE="STANDALONE",
        METRICS_PORT=str(metrics_port),
        MILVUSCONF=str(data_dir / "configs"),
        ETCD_CONFIG_PATH=str(etcd_config),
        LD_LIBRARY_PATH=os.pathsep.join(
            filter(None, [str(binary.parent), os.environ.get("LD_LIBRARY_PATH")])
        ),
    )
    log_path = data_dir / "logs" / "server.log"
    log_file = log_path.open("wb")

    # A new session keeps a Ctrl-C in the terminal from reaching the server before
    # the fixture stops it.
    process = subprocess.Popen(
        [str(binary), "run", "standalone"],
        cwd=data_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return MilvusServerProcess(process, data_dir, port, log_path, log_file)


def _wait_until_ready(server: MilvusServerProcess, timeout: float) -> None:
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not server.running:
            raise MilvusServerError(
                f"Milvus server exited with status {server.process.returncode} "
                f"during start. Last lines of {server.log_path}:\n{server.log_tail()}"
            )
        # A plain TCP connect first keeps pymilvus from logging an error for each
        # attempt while the proxy is not listening yet.
        if _port_open(server.port):
            try:
                client = MilvusClient(uri=server.uri, timeout=5)
                try:
                    client.list_collections()
                finally:
                    client.close()
                return
            except MilvusException as exc:
                last_error = exc
        time.sleep(0.5)

    raise MilvusServerError(
        f"Timed out after {timeout:.0f} s waiting for list_collections() on the "
        f"Milvus server at {server.uri} (last error: {last_error!r}). "
        f"Last lines of {server.log_path}:\n{server.log_tail()}"
    )


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a Milvus 2.3.5 server shared by the whole test session.

    Fails, and never skips, when the server cannot be installed or started.
    """
    data_dir = tmp_path_factory.mktemp("milvus-server")
    try:
        server = start_milvus_server(data_dir)
    except MilvusServerError as exc:
        message = str(exc)
    else:
        message = ""
    if message:
        # Failing outside the except block keeps the chained traceback out of
        # the report, which then shows only the message and the server's log.
        shutil.rmtree(data_dir, ignore_errors=True)
        pytest.fail(message, pytrace=False)

    try:
        yield server.uri
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
