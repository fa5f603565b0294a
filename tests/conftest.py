"""Shared fixtures: a temporary repo folder and a real, pre-migrated MLflow sqlite store per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# Environment variables that steer gain.runtime.tracking; each test starts with none of them set.
TRACKING_ENV = (
    "MLFLOW_TRACKING_URI",
    "DVC_ROOT",
    "DVC_STAGE",
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
    "GAIN_PIPELINE_ID",
)


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory) -> Path:
    """A migrated sqlite store, created once per session: a fresh sqlite file opened by several processes
    (or migrated once per test) is slow and can race on table creation, so tests copy this file instead."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{db}", (folder / "artifacts").as_uri())
    assert [e.name for e in store.search_experiments()] == ["Default"]
    store.engine.dispose()  # no open connection while tests copy the file
    return db


@pytest.fixture
def tmp_repo(tmp_path, monkeypatch) -> Path:
    """cwd = an empty folder holding only an empty dvc.yaml, so gain.runtime.provenance.repo_root() resolves there."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text("")
    monkeypatch.chdir(repo)
    for name in TRACKING_ENV:
        # setenv first so monkeypatch restores the variable's absence even if mlflow sets it later.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    yield repo
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # drop the process-wide URI pointing into this test's tmp_path


@pytest.fixture
def mlflow_uri(mlflow_store_template, tmp_path, tmp_repo, monkeypatch) -> str:
    """A copy of the template store in tmp_path, selected through MLFLOW_TRACKING_URI."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_store_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
