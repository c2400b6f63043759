"""Collections: one searchable corpus each (source + chunking + model), declared in collections.yml."""

import dataclasses
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_type_hints

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from pipelines.embed.names import API_PREFIX, api_model_id
from pipelines.settings import DEFAULT_MODEL, MAX_K

SCHEDULE_PRESETS = {"@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@continuous"}
VERSION_MARK = "@v"
"""A version that is not the active one is named `<collection>@v<N>` (ragpipe.version_name in SQL)."""
DEFAULT_INDEX = {"m": 16, "ef_construction": 64, "ef_search": 40, "keyword_candidates": 4000,
                 "keyword_rescore": 200, "quantization": "none", "rerank": 40}
LANGUAGE_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
"""A text search configuration's name (english, german, simple, ...; `\\dF` in psql lists them)."""
STORAGE_LIMITS = {"float32": 2000, "halfvec": 4000, "binary": 64_000}
"""The widest vector pgvector's HNSW index takes on each type (binary: a bit string of the width)."""


class ConfigError(ValueError):
    """collections.yml (or a command line) describes a collection that cannot work."""


NAME_PATTERN = re.compile(r"\w[\w.-]{0,199}")
"""A collection name: letters, digits, `_`, `.` and `-`, beginning with a letter, digit or `_` (it names an
Airflow DAG, an SQL argument and a CLI argument: `..` or `-x` would be read as a path or an option)."""


def collection_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError("a collection name is 1-200 letters, digits, '_', '.' or '-', beginning with a letter, digit "
                         "or '_' (no spaces, newlines or '@'): "
                         "it names the collection's Airflow DAG and is what SQL and the CLI search by")
    return name


def not_blank(query: str) -> str:
    if not query.strip():
        raise ValueError("a query must have words: a blank query finds nothing, so it proves nothing")
    return query


def version_name(family: str, version: int) -> str:
    """The name that reads version `version` of collection `family`, whatever its state."""
    return f"{family}{VERSION_MARK}{version}"


@dataclass(frozen=True)
class CollectionSpec:
    """A validated collection (built by parse_collection from the `Collection` model, whose defaults apply)."""

    name: str
    source: dict[str, Any]
    """`kind` plus the options given for it, e.g. {"kind": "folder", "path": "/abs/docs"}."""
    schedule: str | None
    model: str
    chunk_tokens: int | None
    """Tokens per chunk, special tokens included; None: the model's max_seq_length."""
    chunk_overlap: int
    chunk_context: bool
    """Embed each chunk after its document's title and heading path (CONTEXT_TOKENS of the chunk's
    budget); the stored and returned text stays the chunk's own. Changing it re-chunks (--full-refresh)."""
    batch_size: int
    """Chunks per call to the model."""
    docs_per_batch: int
    """Documents per load transaction (and per mapped Airflow task)."""
    index: dict[str, Any]
    search: dict[str, Any]
    """Hybrid search defaults given in collections.yml (fusion, rrf_k, alpha, weights)."""
    duplicates: str
    """skip: a document with the same content as another one (another name) is recorded, not indexed
    twice; keep: index both (data sets whose records are judged separately, like BEIR corpora)."""
    description: str
    smoke_queries: list[str]
    """Known queries that must return results after each refresh (the Airflow smoke-check DAG), and
    on a new version before it is promoted."""
    eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The labelled queries a new version is scored on before promotion (EvalOptions)."""
    promote: dict[str, Any] = dataclasses.field(default_factory=lambda: PromoteOptions().model_dump())
    """When a new version replaces the active one (PromoteOptions)."""
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)
    """The `query` and `document` prompts collections.yml sets (PromptOptions); unset: the model's own."""
    embedder: dict[str, Any] = dataclasses.field(default_factory=dict)
    """An API model's endpoint options (ApiOptions, defaults filled in); empty for a local model."""
    storage: str = "float32"
    """The type the HNSW index holds the vectors in: float32 (pgvector's vector) or halfvec (2 bytes a
    dimension, up to 4,000 dimensions). The table keeps float32. A change builds a new version."""
    language: str = "english"
    """The text search configuration of the collection's keyword search (stemming, stop words);
    `simple` for code, ids and mixed scripts. A change builds a new version."""
    languages: list[str] = dataclasses.field(default_factory=list)
    """Other configurations a document may name in its metadata `language` (e.g. german, or ISO
    code de); queries are parsed in all of them. A change builds a new version."""
    dimensions: int | None = None
    """Matryoshka truncation of a local model's vectors to this width, re-normalised (an API model:
    embedder.dimensions, which the endpoint makes). A change builds a new version."""
    watch: dict[str, Any] | None = None
    """WatchOptions when the collection runs on source changes (`watch: true` or options), else None."""
    rerank: dict[str, Any] | None = None
    """RerankOptions when the collection's searches re-rank their best candidates, else None."""
    keyword: bool = True
    """False: no keyword (BM25) index at all, for a collection searched only semantically (keyword and
    hybrid searches of it are an error naming this setting; RAG context is semantic). A change builds a
    new version."""
    enrich: dict[str, Any] = dataclasses.field(default_factory=dict)
    """EnrichOptions given (context: a chat model's situating context per chunk); empty: none."""

    @property
    def family(self) -> str:
        """The collection's stable name (a spec of version N of `docs` is named `docs@vN`)."""
        return self.name.split(VERSION_MARK, 1)[0]


class IndexOptions(BaseModel):
    """HNSW and keyword-search settings of a collection (`index:` in collections.yml)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    m: Annotated[int, Field(ge=2, le=100)] = DEFAULT_INDEX["m"]
    ef_construction: Annotated[int, Field(ge=4, le=1000)] = DEFAULT_INDEX["ef_construction"]
    ef_search: Annotated[int, Field(ge=1, le=1000)] = DEFAULT_INDEX["ef_search"]
    keyword_candidates: Annotated[int, Field(ge=1)] = DEFAULT_INDEX["keyword_candidates"]
    """Keyword search's first round: the postings it reads a query word (4x more each further round).
    Speed only: the ranking is exact BM25 at any value (docs/keyword-search.md)."""
    keyword_rescore: Annotated[int, Field(ge=1, le=100_000)] = DEFAULT_INDEX["keyword_rescore"]
    """Keyword search stops reading deeper once at most this many chunks need their other words
    looked up to be scored exactly. Speed only, as keyword_candidates."""
    quantization: Literal["none", "binary"] = DEFAULT_INDEX["quantization"]
    """binary: the HNSW index holds one bit a dimension (Hamming distance); searches re-rank its best
    `rerank` × k candidates by exact cosine. A change builds a new version."""
    rerank: Annotated[int, Field(ge=1, le=1000)] = DEFAULT_INDEX["rerank"]
    maintenance_work_mem_cap_mb: Annotated[int, Field(ge=64)] | None = None


class PromptOptions(BaseModel):
    """`prompts:` in collections.yml: text put before each query and each chunk when they are embedded
    (e.g. `query: "query: "`, `document: "passage: "` for e5); unset ones are the model's own (its
    sentence-transformers config). The document prompt is a build setting (a change builds a new
    version); the query prompt changes nothing stored and applies to the next search."""

    model_config = ConfigDict(extra="forbid", strict=True)
    query: Annotated[str, Field(max_length=2000)] | None = None
    document: Annotated[str, Field(max_length=2000)] | None = None


def _no_credentials(url: str) -> str:
    from urllib.parse import urlsplit

    if "@" in urlsplit(url).netloc:
        raise ValueError("must not carry credentials (user:password@): they would be stored with the collection; "
                         "give the key through api_key_env or an Airflow connection (`connection:`)")
    return url


EndpointUrl = Annotated[str, Field(pattern=r"^https?://[^\s]+$"), AfterValidator(_no_credentials)]
KeyVariable = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class RateLimit(BaseModel):
    """`rate_limit:` of an API endpoint: the key's limits, shared by every process that calls the endpoint
    with that key (CLI runs, DAG tasks on any worker, the service, watch), through PostgreSQL."""

    model_config = ConfigDict(extra="forbid", strict=True)
    requests_per_minute: Annotated[float, Field(gt=0)] | None = None
    tokens_per_minute: Annotated[float, Field(gt=0)] | None = None


class EndpointKey(BaseModel):
    """How an HTTP endpoint's key is found and sent. The key is never stored: it is read from the
    environment variable `api_key_env`, or the Airflow connection `connection`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    api_key_env: KeyVariable | None = None
    """The variable holding the key; an unset variable sends no key (Ollama and local servers need none)."""
    key_header: Literal["authorization", "api-key"] = "authorization"
    """How the key is sent: `Authorization: Bearer KEY`, or `api-key: KEY` (Azure OpenAI)."""
    connection: Annotated[str, Field(pattern=r"^[\w.-]+$")] | None = None
    """An Airflow connection id whose password is the key (AIRFLOW_CONN_<ID>, or Airflow's secrets)."""
    rate_limit: RateLimit | None = None
    """The endpoint's limits for this key, enforced across processes (queries go first)."""


class ApiOptions(EndpointKey):
    """`embedder:` in collections.yml, for `model: openai:<model>`: an endpoint speaking OpenAI's
    /v1/embeddings (OpenAI, Azure OpenAI, Ollama, vLLM, TEI, LiteLLM)."""

    base_url: EndpointUrl = "https://api.openai.com/v1"
    api_key_env: KeyVariable | None = "OPENAI_API_KEY"
    dimensions: Annotated[int, Field(ge=1, le=16_000)] | None = None
    """Ask for vectors this wide (text-embedding-3-*: any width up to the model's); recorded in the model id."""
    batch_size: Annotated[int, Field(ge=1, le=2048)] = 64
    """Texts per request."""
    max_tokens_per_request: Annotated[int, Field(ge=100)] = 100_000
    """Estimated tokens (3 characters each) per request; a request holds fewer texts when they are long."""
    concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    """Requests in flight at once."""
    max_input_tokens: Annotated[int, Field(ge=16)] = 8191
    """The model's input limit: chunk_tokens may not exceed it."""
    tokenizer: str | None = None
    """A local Hugging Face tokenizer (name or path) to count chunk tokens; default the packaged MiniLM's."""
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    query_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    """A search waits this long for its query's vector, then fails (503 in the service)."""
    retries: Annotated[int, Field(ge=0, le=20)] = 5
    """Tries after the first, on 429, 5xx, a timeout or a lost connection (queries: at most 1)."""
    max_backoff_s: Annotated[float, Field(ge=0, le=600)] = 30.0
    """The longest wait between tries (Retry-After is honoured up to this)."""


class RerankOptions(EndpointKey):
    """`rerank:` in collections.yml: a search's best `candidates` re-scored by a cross-encoder before the
    top k are returned (search, RAG context, ask, the service, MCP). Local: `model` is a
    sentence-transformers CrossEncoder (a Hugging Face id in the local cache, or a path; never
    downloaded). With `base_url`: an endpoint speaking the common /rerank shape (Cohere, Jina, Voyage,
    vLLM, Infinity; `documents_field: texts` for Hugging Face TEI). Not a build setting: a change
    applies to the next search. A reranker that fails or times out returns the first-stage order, flagged."""

    model: Annotated[str, Field(min_length=1, max_length=500)]
    base_url: EndpointUrl | None = None
    """The API's base (POSTs go to <base_url>/rerank); unset: `model` runs here as a CrossEncoder."""
    candidates: Annotated[int, Field(ge=1, le=MAX_K)] = 50
    """How many first-stage hits are re-scored (at least k)."""
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    """An API reranker answers within this, tries included, or the search returns the first-stage order."""
    retries: Annotated[int, Field(ge=0, le=3)] = 1
    """Tries after the first, on 429, 5xx or a lost connection, while timeout_s lasts."""
    documents_field: Literal["documents", "texts"] = "documents"
    """The request's name for the candidates' texts: `documents` (Cohere, Jina, Voyage, vLLM), `texts` (TEI)."""
    max_chars: Annotated[int, Field(ge=100, le=100_000)] = 4000
    """Each candidate's text is cut to this many characters (cross-encoders read about 512 tokens)."""


CONTEXT_PROMPT = """<document>
{document}
</document>
Here is a chunk we want to situate within the whole document:
<chunk>
{chunk}
</chunk>
Please give a short succinct context to situate this chunk within the overall document for the purposes of \
improving search retrieval of the chunk. Answer only with the succinct context and nothing else."""
"""Anthropic's contextual-retrieval prompt: {document} and {chunk} are filled in."""


class ContextOptions(EndpointKey):
    """`enrich: {context: ...}`: an OpenAI-compatible chat model writes each chunk a sentence or two
    situating it in its document; embedded before the chunk and part of its keyword text. A build
    setting (model, prompt, max_tokens, document_tokens): a change builds a new version."""

    model: Annotated[str, Field(min_length=1, max_length=500)]
    base_url: EndpointUrl = "https://api.openai.com/v1"
    """The API's base (POSTs go to <base_url>/chat/completions)."""
    api_key_env: KeyVariable | None = "OPENAI_API_KEY"
    prompt: Annotated[str, Field(min_length=1, max_length=20_000)] = CONTEXT_PROMPT
    """The request: {document} (cut to document_tokens) and {chunk} are filled in."""
    max_tokens: Annotated[int, Field(ge=8, le=512)] = 64
    """The answer's limit, and the tokens each chunk keeps free for it (less text per chunk)."""
    document_tokens: Annotated[int, Field(ge=100, le=1_000_000)] = 8000
    """The document is cut to about this many tokens (3 characters each) in each request."""
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    """Each try's limit (a dripping answer included)."""
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    """Tries after the first, on 429, 5xx, a timeout or a lost connection."""
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    """Requests in flight at once."""


class EnrichOptions(BaseModel):
    """`enrich:` in collections.yml: what a model adds to each chunk before it is embedded."""

    model_config = ConfigDict(extra="forbid", strict=True)
    context: ContextOptions | None = None


class SearchOptions(BaseModel):
    """Hybrid search defaults of a collection (`search:` in collections.yml), read by ragpipe.hybrid_search
    when a call leaves them NULL; unset ones take the SQL defaults (ragpipe.hybrid_defaults)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    fusion: Literal["rrf", "convex"] | None = None
    rrf_k: Annotated[int, Field(ge=0, le=10_000)] | None = None
    alpha: Annotated[float, Field(ge=0, le=1)] | None = None
    semantic_weight: Annotated[float, Field(ge=0)] | None = None
    keyword_weight: Annotated[float, Field(ge=0)] | None = None


class WatchOptions(BaseModel):
    """`watch:` in collections.yml: run the collection when its source changes (`ragpipe watch`, or
    the Airflow DAG's AssetWatcher beside its schedule). Not a build setting: nothing is re-embedded."""

    model_config = ConfigDict(extra="forbid", strict=True)
    debounce_s: Annotated[float, Field(ge=0, le=600)] = 2.0
    """Changes this close together start one run (a burst of 1,000 writes is a few runs, not 1,000)."""
    table: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")] | None = None
    """sql sources: the table whose changes notify (`ragpipe watch setup NAME` installs the trigger)."""
    queue_url: str | None = None
    """s3 sources: the SQS queue of the bucket's event notifications (`ragpipe watch setup NAME`
    creates it and the notification when unset: ragpipe-<collection>)."""
    interval_s: Annotated[float, Field(ge=1, le=86_400)] = 60.0
    """web, gcs and azure sources (no events reach ragpipe offline): how often the source is listed again."""


class InlineQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: Annotated[str, AfterValidator(not_blank)]
    expect: Annotated[list[str], Field(min_length=1)]
    """Source ids of documents that answer it; the score is the share of queries with one in the top k."""


class EvalOptions(BaseModel):
    """`eval:` in collections.yml: a BEIR-layout directory (queries.jsonl, qrels/<split>.tsv, ids = the
    collection's source ids) scored by nDCG@10, or an inline list of queries scored by hit rate@10."""

    model_config = ConfigDict(extra="forbid", strict=True)
    path: str | None = None
    split: str = "test"
    queries: list[InlineQuery] = Field(default_factory=list)
    max_queries: Annotated[int, Field(ge=1)] = 500
    mode: Literal["hybrid", "semantic", "keyword"] = "hybrid"
    k: Annotated[int, Field(ge=1, le=100)] = 10
    """Cut-off of the score: nDCG@k, or hit rate@k."""


class PromoteOptions(BaseModel):
    """`promote:` in collections.yml: a new version (model, chunking or index build change) replaces
    the active one when auto and its score drops by at most max_drop; manual waits for `ragpipe promote`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    mode: Literal["auto", "manual"] = "auto"
    max_drop: Annotated[float, Field(ge=0, le=1)] = 0.01


def source_model() -> Any:
    """A discriminated union on `kind` of one model per source kind, built from the source classes'
    own typed fields, so each option is declared once (in pipelines/sources/)."""
    from pipelines.sources import source_classes

    models = []
    for kind, cls in source_classes().items():
        hints = get_type_hints(cls, include_extras=True)
        fields: dict[str, Any] = {"kind": (Literal[kind], ...)}
        for f in dataclasses.fields(cls):
            if f.name == "kind" or not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                default: Any = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = Field(default_factory=f.default_factory)
            else:
                default = ...
            fields[f.name] = (hints[f.name], default)
        models.append(create_model(f"{kind}_source", __config__=ConfigDict(extra="forbid", strict=True), **fields))
    return Annotated[Union[tuple(models)], Field(discriminator="kind")]  # noqa: UP007


@cache
def collection_model() -> type[BaseModel]:
    source_type = source_model()

    class Collection(BaseModel):
        """One entry of collections.yml."""

        model_config = ConfigDict(extra="forbid", strict=True)
        name: Annotated[str, AfterValidator(collection_name)]
        source: source_type  # type: ignore[valid-type]
        schedule: str | None = None
        model: str = DEFAULT_MODEL
        chunk_tokens: Annotated[int, Field(ge=16)] | None = None
        chunk_overlap: Annotated[int, Field(ge=0)] = 32
        chunk_context: bool = False
        batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
        docs_per_batch: Annotated[int, Field(ge=1, le=100_000)] = 64
        index: IndexOptions = Field(default_factory=IndexOptions)
        search: SearchOptions = Field(default_factory=SearchOptions)
        duplicates: Literal["skip", "keep"] = "skip"
        description: str = ""
        smoke_queries: list[Annotated[str, AfterValidator(not_blank)]] = Field(default_factory=list)
        eval: EvalOptions = Field(default_factory=EvalOptions)
        promote: PromoteOptions = Field(default_factory=PromoteOptions)
        prompts: PromptOptions = Field(default_factory=PromptOptions)
        embedder: ApiOptions | None = None
        storage: Literal["float32", "halfvec"] = "float32"
        language: Annotated[str, Field(pattern=LANGUAGE_PATTERN)] = "english"
        languages: list[Annotated[str, Field(pattern=LANGUAGE_PATTERN)]] = Field(default_factory=list)
        dimensions: Annotated[int, Field(ge=8, le=16_000)] | None = None
        watch: WatchOptions | bool | None = None
        rerank: RerankOptions | None = None
        keyword: bool = True
        enrich: EnrichOptions = Field(default_factory=EnrichOptions)

    return Collection


def load_collections(path: Path) -> dict[str, CollectionSpec]:
    """Read and validate collections.yml; relative source paths are relative to the file."""
    if not path.exists():
        raise ConfigError(f"{path}: no such collections file (set RAGPIPE_COLLECTIONS or create it)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("collections"), list):
        raise ConfigError(f"{path}: expected a top-level `collections:` list")
    specs: dict[str, CollectionSpec] = {}
    for i, raw in enumerate(data["collections"]):
        spec = parse_collection(raw, where=f"{path}: collection #{i + 1}", base=path.parent)
        if spec.name in specs:
            raise ConfigError(f"{path}: collection {spec.name!r} is declared twice")
        specs[spec.name] = spec
    return specs


def parse_collection(raw: Any, where: str, base: Path) -> CollectionSpec:
    """One collection, validated: an error names the collection, the key path and what was expected."""
    if not isinstance(raw, dict) or not raw.get("name"):
        raise ConfigError(f"{where}: each collection needs a `name`")
    where = f"collection {raw['name']!r}"
    if not isinstance(raw.get("source"), dict):
        raise ConfigError(f"{where}: missing `source` (e.g. source: {{kind: folder, path: docs/}})")
    try:
        model = collection_model().model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    check_schedule(model.schedule, where)
    embedder = model.embedder.model_dump() if raw.get("embedder") else {}  # a local spec's own {} parses again
    if model.model.startswith(API_PREFIX):
        embedder = embedder or ApiOptions().model_dump()
        if model.dimensions and embedder["dimensions"] not in (None, model.dimensions):
            raise ConfigError(f"{where}: `dimensions: {model.dimensions}` and `embedder.dimensions: "
                              f"{embedder['dimensions']}` disagree; give one")
        embedder["dimensions"] = embedder["dimensions"] or model.dimensions
        model.dimensions = None  # the endpoint makes the width: it is in the model id
        name, _, width = model.model.partition("#")  # a spec's own model id ("…#512") parses again
        if width and width != str(embedder["dimensions"]):
            raise ConfigError(f"{where}: model {model.model!r}: set the width with `embedder: {{dimensions: N}}`, "
                              "not a '#' suffix")
        model.model = api_model_id(name, embedder["dimensions"])
    elif embedder:
        raise ConfigError(f"{where}: `embedder:` options are for an API model (model: {API_PREFIX}<model>); "
                          f"{model.model!r} is a local model")
    source = model.source.model_dump(exclude_unset=True)
    source["kind"] = model.source.kind
    if "path" in source and "://" not in str(source["path"]) and not str(source["path"]).startswith("/"):
        source["path"] = str((base / str(source["path"])).resolve())
    index = model.index.model_dump(exclude_none=True)
    search = model.search.model_dump(exclude_none=True)
    evaluation = model.eval.model_dump(exclude_defaults=True)
    if evaluation.get("path") and not str(evaluation["path"]).startswith("/"):
        evaluation["path"] = str((base / evaluation["path"]).resolve())
    watch = (WatchOptions() if model.watch is True else model.watch or None)
    if watch and model.schedule in ("@once", "@continuous"):
        raise ConfigError(f"{where}: `watch:` runs the collection on each change; its `schedule` may be a cron "
                          f"expression, a preset such as @daily, or null, not {model.schedule}")
    if watch and source["kind"] == "sql" and not watch.table:
        raise ConfigError(f"{where}: `watch:` of a sql source needs `table: schema.table`, the table whose "
                          "changes notify (`ragpipe watch setup` installs its trigger)")
    return CollectionSpec(**dict(model.model_dump(exclude={"source", "index", "search", "eval", "prompts", "embedder",
                                                           "watch", "rerank", "enrich"}),
                                 watch=watch.model_dump() if watch else None,
                                 enrich=model.enrich.model_dump(exclude_none=True),
                                 rerank=model.rerank.model_dump() if model.rerank else None,
                                 source=source, index=index, search=search, eval=evaluation, embedder=embedder,
                                 prompts=model.prompts.model_dump(exclude_none=True)))


def _describe(error: Any) -> str:
    """`source.concurrency: Input should be a valid integer (got 'four')`; the union's tag is left out."""
    loc = [str(p) for p in error["loc"]]
    if loc[:1] == ["source"] and len(loc) > 1:  # ("source", kind, option): the kind is the union's tag
        loc = loc[:1] + loc[2:]
    text = f"{'.'.join(loc) or 'collection'}: {error['msg']}"
    if error["type"] == "extra_forbidden":
        text = f"{'.'.join(loc)}: unknown key"
    elif "input" in error and error["type"] not in ("missing", "union_tag_not_found"):
        text += f" (got {shown_value(error['input'])})"
    return text


def shown_value(value: Any, limit: int = 80) -> str:
    """A user's value in a message: repr, URL passwords masked, cut to `limit` characters."""
    from pipelines.store.database import mask_url

    shown = mask_url(repr(value))
    return shown if len(shown) <= limit else shown[:limit] + "…"


def check_schedule(schedule: Any, where: str) -> None:
    if schedule is None or schedule in SCHEDULE_PRESETS:
        return
    from croniter import croniter

    if not isinstance(schedule, str) or not croniter.is_valid(schedule):
        raise ConfigError(f"{where}: `schedule` {schedule!r} is not a cron expression or one of "
                          f"{sorted(SCHEDULE_PRESETS)} (or null for manual runs only)")
