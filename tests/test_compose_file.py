"""Checks of docker-compose.milvus.yml, the Milvus stack offered to users."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.milvus.yml"
SERVICES = {"etcd", "minio", "milvus"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


def published_host_ip(port: str | int | dict[str, Any]) -> str | None:
    """Return the host address of a published port, or None when it has none.

    Accepts the short syntax ("127.0.0.1:19530:19530/tcp", "19530:19530", "19530")
    and the long syntax (a mapping with ``host_ip``).
    """
    if isinstance(port, dict):
        return port.get("host_ip")

    mapping = str(port).split("/", 1)[0]
    parts = mapping.rsplit(":", 2)
    if len(parts) < 3:
        return None
    return parts[0].strip("[]")


def image_version(image: str) -> tuple[int, ...]:
    """Return the numeric version of an image tag such as ``name:v2.5.14``."""
    tag = image.rsplit(":", 1)[1]
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", tag)
    assert match, f"image tag {tag!r} is not a release version like v2.5.14"
    return tuple(int(part) for part in match.groups())


def test_published_host_ip_parses_port_syntaxes() -> None:
    assert published_host_ip("127.0.0.1:19530:19530") == "127.0.0.1"
    assert published_host_ip("127.0.0.1:9091:9091/tcp") == "127.0.0.1"
    assert published_host_ip("[::1]:9091:9091") == "::1"
    assert published_host_ip("19530:19530") is None
    assert published_host_ip(19530) is None
    assert published_host_ip({"target": 19530, "host_ip": "127.0.0.1"}) == "127.0.0.1"
    assert published_host_ip({"target": 19530, "published": 19530}) is None


def test_compose_defines_milvus_etcd_minio(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_compose_service_has_healthcheck(compose: dict[str, Any], service: str) -> None:
    healthcheck = compose["services"][service].get("healthcheck")

    assert healthcheck, f"{service} has no healthcheck"
    assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}
    assert not healthcheck.get("disable", False)
    assert healthcheck.get("retries", 0) >= 1


def test_compose_milvus_healthcheck_uses_healthz(compose: dict[str, Any]) -> None:
    command = " ".join(compose["services"]["milvus"]["healthcheck"]["test"])

    assert "localhost:9091/healthz" in command


def test_compose_milvus_waits_for_healthy_dependencies(
    compose: dict[str, Any],
) -> None:
    depends_on = compose["services"]["milvus"]["depends_on"]

    assert set(depends_on) == {"etcd", "minio"}
    for dependency, settings in depends_on.items():
        assert settings["condition"] == "service_healthy", dependency


def test_compose_milvus_points_at_etcd_and_minio(compose: dict[str, Any]) -> None:
    environment = compose["services"]["milvus"]["environment"]

    assert environment["ETCD_ENDPOINTS"] == "etcd:2379"
    assert environment["MINIO_ADDRESS"] == "minio:9000"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_compose_service_uses_named_volume(
    compose: dict[str, Any], service: str
) -> None:
    declared = set(compose.get("volumes") or {})
    mounts = compose["services"][service].get("volumes", [])
    sources = [str(mount).split(":", 1)[0] for mount in mounts]

    assert sources, f"{service} mounts no volume"
    for source in sources:
        assert source in declared, f"{service} mounts {source!r}, not a named volume"


def test_compose_publishes_ports_on_loopback_only(compose: dict[str, Any]) -> None:
    published = [
        (name, port)
        for name, service in compose["services"].items()
        for port in service.get("ports", [])
    ]

    assert published, "no service publishes a port"
    for name, port in published:
        assert published_host_ip(port) == "127.0.0.1", f"{name} publishes {port!r}"


def test_compose_milvus_publishes_grpc_and_health(compose: dict[str, Any]) -> None:
    ports = [str(port) for port in compose["services"]["milvus"]["ports"]]

    assert "127.0.0.1:19530:19530" in ports
    assert "127.0.0.1:9091:9091" in ports


def test_compose_milvus_image_is_at_least_2_5(compose: dict[str, Any]) -> None:
    image = compose["services"]["milvus"]["image"]

    assert image.startswith("milvusdb/milvus:")
    assert image_version(image) >= (2, 5, 0), f"{image} is older than Milvus 2.5"


def test_compose_etcd_image_is_coreos(compose: dict[str, Any]) -> None:
    image = compose["services"]["etcd"]["image"]

    assert image.startswith("quay.io/coreos/etcd:")
    assert image_version(image) >= (3, 5, 0)


def _docker_compose_unavailable() -> str | None:
    """Return why ``docker compose`` cannot run here, or None when it can."""
    docker = shutil.which("docker")
    if docker is None:
        return "the docker CLI is not installed"

    checks = {
        "the docker compose plugin is not installed": [docker, "compose", "version"],
        "no Docker engine answers": [docker, "info"],
    }
    for reason, command in checks.items():
        try:
            result = subprocess.run(
                command, capture_output=True, timeout=20, check=False
            )
        except subprocess.TimeoutExpired:
            return f"{reason} (timed out after 20 s)"
        if result.returncode != 0:
            return reason
    return None


def test_compose_file_passes_docker_compose_config() -> None:
    reason = _docker_compose_unavailable()
    if reason:
        pytest.skip(reason)

    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
