"""collections.yml validation: typed, bounded options; one message naming the collection, the key
path and what was expected (fast: no database, no model)."""

from pathlib import Path

import pytest

from pipelines.config import ConfigError, parse_collection

FOLDER = {"kind": "folder", "path": "docs"}

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("entry, message", [
    ({"source": {"kind": "web", "sitemap": "http://x/s.xml", "concurrency": "four"}},
     "source.concurrency: Input should be a valid integer (got 'four')"),
    ({"source": {"kind": "web", "sitemap": "http://x/s.xml", "concurrency": 0}},
     "source.concurrency: Input should be greater than or equal to 1 (got 0)"),
    ({"source": {"kind": "web", "sitemap": "http://x/s.xml", "concurency": 4}}, "source.concurency: unknown key"),
    ({"source": {"kind": "folder"}}, "source.path: Field required"),
    ({"source": {"kind": "ftp", "path": "x"}}, "does not match any of the expected tags: 'folder', 'tabular'"),
    ({"source": FOLDER, "chunk_tokens": "256"}, "chunk_tokens: Input should be a valid integer (got '256')"),
    ({"source": FOLDER, "index": {"m": 1}}, "index.m: Input should be greater than or equal to 2 (got 1)"),
    ({"source": FOLDER, "duplicates": "maybe"}, "duplicates: Input should be 'skip' or 'keep' (got 'maybe')"),
    ({"source": FOLDER, "colour": "blue"}, "colour: unknown key"),
    ({"source": FOLDER, "schedule": "every tuesday"}, "`schedule` 'every tuesday' is not a cron expression"),
])
def test_bad_options_are_refused_with_the_collection_the_key_path_and_the_expectation(entry, message):
    with pytest.raises(ConfigError) as err:
        parse_collection({"name": "docs", **entry}, where="docs", base=Path("/base"))
    assert str(err.value).startswith("collection 'docs': ") and message in str(err.value)


def test_todays_collections_file_still_loads_and_defaults_apply():
    from pipelines.config import load_collections
    from tests.conftest import ROOT

    specs = load_collections(ROOT / "collections.yml")
    assert {"sample", "sample_records", "sample_s3", "sample_web", "sample_sql"} <= set(specs)
    web = specs["sample_web"]
    assert web.source["kind"] == "web" and web.source["allow_private_networks"] is True
    assert (web.chunk_overlap, web.batch_size, web.docs_per_batch, web.duplicates) == (32, 32, 64, "skip")
    assert specs["sample"].source["path"] == str(ROOT / "examples" / "corpus"), "relative to the file"
    assert specs["sample"].index["ef_search"] == 40 and "maintenance_work_mem_cap_mb" not in specs["sample"].index
