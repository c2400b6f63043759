"""No Docker engine here: check that docker-compose.yml agrees with the project instead."""

import re
import sys

import yaml

from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_services_and_commands():
    commands = {name: svc.get("command") for name, svc in SERVICES.items()}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"
    assert "airflow db migrate" in " ".join(commands["airflow-init"]) and "ragpipe db migrate" in " ".join(
        commands["airflow-init"])
    assert SERVICES["postgres"]["image"].startswith("pgvector/pgvector:")
    assert "healthcheck" in SERVICES["postgres"] and "healthcheck" in SERVICES["airflow-apiserver"]
    assert "8080:8080" in SERVICES["airflow-apiserver"]["ports"]


def test_airflow_services_share_the_project_image_and_settings():
    for name in ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "airflow-worker"):
        svc = SERVICES[name]
        assert svc["build"] == "." and (ROOT / "Dockerfile").exists()
        env = svc["environment"]
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/ragpipe/dags"
        assert "./dags:/opt/ragpipe/dags" in svc["volumes"]
        from pipelines.airflow.connections import CONNECTION_ID

        assert f"AIRFLOW_CONN_{CONNECTION_ID.upper()}" in env
        assert env["AIRFLOW_CONN_RAGPIPE_DB"].startswith("postgresql://") and "@postgres:5432/" in env[
            "AIRFLOW_CONN_RAGPIPE_DB"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install" in dockerfile and "/opt/ragpipe" in dockerfile
    lock = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    image = re.search(r"FROM apache/airflow:([\d.]+)-python([\d.]+)", dockerfile)
    assert image and image.group(1) == lock["apache-airflow"], "the image runs the Airflow that CI tests"
    assert image.group(2) == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f'torch=={lock["torch"]}' in dockerfile, "the image's torch is the tested one"


def test_celery_profile_runs_what_the_distributed_test_proves():
    from tests.test_distributed import WORKER_COMMAND

    assert SERVICES["redis"]["profiles"] == ["celery"]
    worker = SERVICES["airflow-worker"]
    assert worker["profiles"] == ["celery"] and worker["command"].split() == WORKER_COMMAND
    assert worker["deploy"]["replicas"] == 2 and "redis" in worker["depends_on"]
    env = worker["environment"]
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg://")


def test_postgres_init_creates_the_vector_database():
    init = (ROOT / "docker" / "postgres-init.sql").read_text()
    assert "CREATE DATABASE ragpipe" in init and "CREATE EXTENSION IF NOT EXISTS vector" in init
    mount = [v for v in SERVICES["postgres"]["volumes"] if "postgres-init.sql" in v]
    assert mount and mount[0].startswith("./docker/postgres-init.sql:/docker-entrypoint-initdb.d/")
