"""docker-compose.yml stays valid (no Docker here, so its structure is checked instead)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVICE_MODULES = {"ingest", "analyzer", "aggregator", "api"}


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_kafka_and_the_four_services() -> None:
    services = load_compose()["services"]
    assert {"kafka", "topics", *SERVICE_MODULES} <= set(services)
    for name in SERVICE_MODULES:
        service = services[name]
        assert service["command"] == ["python", "-m", name]
        assert service["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert importlib.util.find_spec(name) is not None, f"module {name} missing"
    assert services["api"]["ports"] == ["8000:8000"]


def test_compose_references_are_consistent() -> None:
    compose = load_compose()
    services, volumes = compose["services"], set(compose.get("volumes", {}))
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source in volumes, f"{name} mounts undeclared volume {source}"
    assert services["topics"]["command"] == ["python", "-m", "livestream.kafka.admin"]
    assert importlib.util.find_spec("livestream.kafka.admin") is not None


def test_dockerfile_copies_existing_paths() -> None:
    for source in re.findall(r"^COPY (\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M):
        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_every_long_running_service_is_restarted_and_health_checked() -> None:
    services = load_compose()["services"]
    for name in ("kafka", *sorted(SERVICE_MODULES)):
        service = services[name]
        assert service["restart"] == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        if name != "kafka":
            assert test[1:4] == ["python", "-m", "livestream.healthcheck"], name
            assert service["depends_on"]["kafka"]["condition"] == "service_healthy", name
    assert services["api"]["healthcheck"]["test"][4] == "http://127.0.0.1:8000/healthz"
    # The broker restarts in place: its data is on a volume, so topics and offsets survive.
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]
    assert importlib.util.find_spec("livestream.healthcheck") is not None
