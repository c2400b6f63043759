"""The fast unit tier (`make unit`, seconds): SQL-free logic with no database, no model, no Airflow."""

import pytest

from pipelines.settings import SettingsError, load_settings
from pipelines.sources import DocumentRef, Gone, NotModified, RawDocument, same_fingerprint
from pipelines.store.database import mask_url
from pipelines.sync.load import BatchResult
from pipelines.sync.read import (
    AlreadyWritten,
    Failure,
    Touched,
    Vanished,
    body_hash,
    classify,
    content_hash,
    storable,
)

pytestmark = pytest.mark.unit


REF = DocumentRef("a.md", "file:///a.md", "fp-listed")
RAW = RawDocument(DocumentRef("a.md", "file:///a.md", "fp-read"), b"# A\nbody", ".md", metadata={"path": "a.md"})
DIGEST = content_hash(RAW)


@pytest.mark.parametrize("read, stored, written_by, full_refresh, want", [
    (OSError("permission denied"), None, None, False, Failure("read", "permission denied")),
    (NotModified(DocumentRef("a.md", "u", "fp-304")), DIGEST, 1, False, Touched("fp-304")),
    (Gone(REF, "HTTP 404"), DIGEST, 1, False, Vanished()),
    (RAW, None, None, False, None),  # new: extract it
    (RAW, "another hash", 1, False, None),  # changed: extract it
    (RAW, DIGEST, 1, False, Touched("fp-read")),  # unchanged: record the fingerprint it was read with
    (RAW, DIGEST, 1, True, None),  # unchanged, but a full refresh re-chunks it
    (RAW, DIGEST, 7, False, AlreadyWritten()),  # a retried batch of run 7 finds it done
    (RAW, DIGEST, 7, True, AlreadyWritten()),  # ... even in a full refresh
])
def test_classify_decides_each_document_before_extraction(read, stored, written_by, full_refresh, want):
    digest = content_hash(read) if isinstance(read, RawDocument) else None
    assert classify(read, digest, stored, written_by, run_id=7, full_refresh=full_refresh) == want


def test_hashes_tell_renamed_copies_from_edited_metadata():
    renamed = RawDocument(DocumentRef("b.md", "file:///b.md", "x"), RAW.content, ".md", metadata={"path": "b.md"})
    assert body_hash(renamed) == body_hash(RAW), "a copy under another name has the same body"
    assert content_hash(renamed) != content_hash(RAW), "but metadata is part of the document"
    retitled = RawDocument(RAW.ref, RAW.content, ".md", title="New", metadata=RAW.metadata)
    assert body_hash(retitled) != body_hash(RAW)


def test_storable_removes_nul_everywhere_postgres_cannot_hold_it():
    assert storable({"k\x00ey": ["a\x00b", {"n": 1, "s": "\x00"}], "x": None}) == {"key": ["ab", {"n": 1, "s": ""}],
                                                                                     "x": None}


@pytest.mark.parametrize("listed, stored, same", [
    ("t1", "t1", True),
    ("t1", "t1\x1fetag-9", True),  # stored validators after the listed part
    ("t2", "t1\x1fetag-9", False),
    ("", "\x1fetag-9", False),  # an empty listed fingerprint never matches by prefix
    ("t1", None, False),
])
def test_fingerprints(listed, stored, same):
    assert same_fingerprint(listed, stored) is same


def test_batch_results_add_up_and_count_without_the_failure_list():
    total = BatchResult()
    total.add(BatchResult(new=2, failed=1, processed=3, failures=[("x", "read", "gone")]))
    total.add(BatchResult(changed=1, chunks_embedded=5, processed=1))
    assert total.processed == 4 and total.failures == [("x", "read", "gone")]
    assert total.counts() == dict(new=2, changed=1, unchanged=0, failed=1, chunks_embedded=5, chunks_reused=0,
                                  deleted=0, duplicates=0, api_tokens=0, api_tokens_estimated=0,
                                  context_tokens=0, context_tokens_estimated=0)


@pytest.mark.parametrize("text, want", [
    ("postgresql://app:s3cr3t-pw@db:5432/x", "postgresql://app:***@db:5432/x"),
    ("host=db password='a b\\'c' user=app", "host=db password=*** user=app"),
    ("cannot reach postgresql://u:hunter22@h/d: timeout", "cannot reach postgresql://u:***@h/d: timeout"),
])
def test_mask_url_never_shows_a_password(text, want):
    assert mask_url(text) == want


def test_a_bad_setting_is_one_line_naming_its_variable(monkeypatch):
    monkeypatch.setenv("RAGPIPE_BATCH_TIMEOUT", "soon")
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert "RAGPIPE_BATCH_TIMEOUT" in message.upper() and "'soon'" in message and "\n" not in message


@pytest.mark.parametrize("flags, want", [
    (("avx2", "avx512f", "avx512_vnni", "avx512_bf16"), "bf16"),  # AMD EPYC Zen 4
    (("avx2", "avx512_vnni", "amx_bf16", "amx_int8"), "bf16"),  # Intel Xeon with AMX
    (("avx2", "avx_vnni"), "onnx-int8"),
    (("avx2",), "torch"),
])
def test_auto_backend_follows_the_cpu_flags(flags, want, monkeypatch):
    from pipelines.embed.hardware import best_backend

    monkeypatch.delenv("RAGPIPE_AUTO_BACKEND", raising=False)
    assert best_backend(flags, cuda=False) == want


def test_auto_keeps_the_backend_a_version_was_built_with(monkeypatch):
    from pipelines.embed import resolve_model

    monkeypatch.setenv("RAGPIPE_AUTO_BACKEND", "onnx-int8")
    assert resolve_model("m#auto") == "m#onnx-int8"
    assert resolve_model("m#auto", built_with="m#bf16") == "m#bf16", "another machine's runs keep it"
    assert resolve_model("m#auto", built_with="other") == "m#onnx-int8"
    monkeypatch.setenv("RAGPIPE_AUTO_BACKEND", "torch")
    assert resolve_model("m#auto") == "m" and resolve_model("m#bf16") == "m#bf16"


def test_device_follows_ragpipe_device_and_says_what_to_do_without_a_gpu(monkeypatch):
    from pipelines.embed import ModelUnavailable
    from pipelines.embed.hardware import best_backend, choose_device

    monkeypatch.delenv("RAGPIPE_AUTO_BACKEND", raising=False)
    assert choose_device("torch", "auto", cuda=True) == "cuda"
    assert choose_device("torch", "auto", cuda=False) == "cpu"
    assert choose_device("bf16", "cpu", cuda=True) == "cpu"
    assert choose_device("onnx-int8", "cuda", cuda=True) == "cpu", "the int8 export runs on the CPU"
    assert choose_device("fp16", "auto", cuda=True) == "cuda"
    with pytest.raises(ModelUnavailable, match="RAGPIPE_DEVICE=cuda but torch sees no CUDA GPU"):
        choose_device("torch", "cuda", cuda=False)
    with pytest.raises(ModelUnavailable, match="fp16 backend runs on a CUDA GPU"):
        choose_device("fp16", "auto", cuda=False)
    assert best_backend(("avx2",), cuda=True) == "fp16"
    monkeypatch.setenv("RAGPIPE_DEVICE", "cpu")
    assert best_backend(("avx2",), cuda=True) == "torch", "RAGPIPE_DEVICE=cpu keeps #auto on the CPU"



def test_the_bench_names_its_corpus_and_skips_what_needs_a_real_one(tmp_path, monkeypatch):
    """Defect: without ../shared/data/beir/nfcorpus, `make bench` built its 100k search set from the
    193 sample sentences, still called them NFCorpus sentences, and printed meaningless recall."""
    from tools.synthetic import SAMPLE_RECORDS, bench_corpus, corpus_label, runnable_sections, sentences

    monkeypatch.setenv("BENCH_CORPUS", str(tmp_path / "nowhere"))
    assert bench_corpus() is None
    assert corpus_label(None) == "the sample corpus (examples/corpus/records.jsonl)"
    run, skipped = runnable_sections(["embedding", "loading", "reruns", "versions", "search", "service"], None)
    assert run == ["loading", "reruns"] and skipped == ["embedding", "versions", "search", "service"]
    assert len(sentences()) >= 100 and all(s in SAMPLE_RECORDS.read_text() for s in sentences()[:5])

    dataset = tmp_path / "scifact"
    dataset.mkdir()
    (dataset / "corpus.jsonl").write_text('{"_id": "1", "title": "T", "text": "Alpha beta gamma delta epsilon. '
                                          'Zeta eta theta iota kappa."}\n')
    (dataset / "queries.jsonl").write_text('{"_id": "q", "text": "alpha"}\n')
    monkeypatch.setenv("BENCH_CORPUS", str(dataset))
    assert bench_corpus() == dataset and corpus_label(dataset) == "BEIR scifact"
    assert runnable_sections(["search", "loading"], dataset) == (["search", "loading"], [])
    assert sentences() == ["Alpha beta gamma delta epsilon.", "Zeta eta theta iota kappa."]
