"""The sample collections in collections.yml, one per source kind, ingest offline."""

import pytest

from pipelines.config import load_collections
from pipelines.ingest import run_ingest
from pipelines.search import search
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def samples(db_url):
    import os

    from tools import samples

    env, azurite = samples.start_all(db_url)
    assert azurite is not None, "Azurite is not installed: `make azurite`"
    os.environ.update(env)
    yield load_collections(ROOT / "collections.yml")
    azurite.terminate()
    azurite.wait(timeout=30)


@pytest.mark.parametrize("name,expected", [("sample_s3", 12), ("sample_gcs", 12), ("sample_azure", 12),
                                           ("sample_web", 6), ("sample_sql", 20)])
def test_sample_collection_ingests_offline(samples, name, expected):
    summary = run_ingest(samples[name])
    assert (summary["status"], summary["new"], summary["failed"]) == ("succeeded", expected, 0), summary
    assert search("coffee", collection=name, k=1)
