"""The container commands are the commands the tests run: each one parses as a `moecomp` command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from moecomp.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _parses(argv: list[str]) -> None:
    assert argv[0] == "moecomp", argv
    build_parser(argv[1:]).parse_args(argv[1:])


def test_compose_services_run_moecomp_commands():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    for name in ("migrate", "api", "worker"):
        _parses(services[name]["command"])
        env = services[name]["environment"]
        assert env["MOECOMP_DATABASE_URL"].startswith("postgresql+psycopg://")  # not the embedded mode
        assert env["MOECOMP_BROKER_URL"].startswith("redis://")
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert "data:/data" in services["api"]["volumes"] and "data:/data" in services["worker"]["volumes"]


def test_dockerfile_commands_parse_and_pin_torch():
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        text = (ROOT / "docker" / name).read_text()
        cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
        assert cmd is not None
        _parses(json.loads(cmd.group(1)))
        assert "torch==2.13.0" in text


def test_the_worker_only_host_shares_no_volume_with_the_api_and_reaches_it_by_url():
    compose = yaml.safe_load((ROOT / "docker-compose.worker.yml").read_text())
    assert set(compose["services"]) == {"worker"}  # no database, broker or API of its own
    worker = compose["services"]["worker"]
    _parses(worker["command"])
    env = worker["environment"]
    assert env["MOECOMP_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["MOECOMP_BROKER_URL"].startswith("redis://")
    assert env["MOECOMP_API_URL"].startswith("http://")
    assert env["MOECOMP_WORKER_KEY"].startswith("${MOECOMP_WORKER_KEY:?")  # required, from the host's environment
    assert not any(volume.startswith("data:") for volume in worker["volumes"])  # not the API's data volume
    assert set(compose["volumes"]) == {"worker-data"}
    main = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert worker["image"] == main["worker"]["image"] and worker["build"] == main["worker"]["build"]
    for name, port in (("postgres", 5432), ("redis", 6379)):  # reachable from worker hosts where the operator says
        assert main[name]["ports"] == [f"${{MOECOMP_PUBLISH_ADDR:-127.0.0.1}}:{port}:{port}"]
