"""The report of a `make bench` run: its lines, its named figures, the machine, and the results files."""

import json
import os
import platform
from datetime import date
from pathlib import Path
from typing import Any

import psutil

from pipelines.config import parse_collection
from pipelines.embed.hardware import CPU_FLAGS
from pipelines.settings import PROJECT_ROOT
from tools.synthetic import (
    bench_corpus,
    corpus_label,
)

SCALES = {
    "small": dict(embed_docs=300, load_rows=20_000, rerun_docs=2_000, memory_docs=200, search_chunks=100_000,
                  queries=100),
    "large": dict(embed_docs=3633, load_rows=100_000, rerun_docs=10_000, memory_docs=1_000,
                  search_chunks=1_000_000, queries=100),
}
SCALES["xl"] = {**SCALES["large"], "search_chunks": 3_000_000}  # its search section; the rest as large


def scale_label(chunks: int) -> str:
    """100k, 1m, 3m: a size in the figures' names (search.1m.keyword_p50_ms)."""
    return f"{chunks // 1_000_000}m" if chunks >= 1_000_000 else f"{chunks // 1000}k"


results: list[tuple[str, str, str]] = []
figures: dict[str, float] = {}
"""Named figures for tools (docs/benchmarks*.json "figures"), e.g. "backend.bf16.over_fp32"."""


def record(section: str, metric: str, value: str, **named: float) -> None:
    """One line of the report; `named` figures also go to the JSON file under their dotted names
    (keyword arguments use "__" for ".": embedding__pipeline_over_raw)."""
    results.append((section, metric, value))
    figures.update({k.replace("__", "."): round(float(v), 4) for k, v in named.items()})
    print(f"{section:<12} {metric:<58} {value}", flush=True)


def spec(name: str, source: dict[str, Any], **kw: Any):
    return parse_collection({"name": name, "source": source, **kw}, where=name, base=PROJECT_ROOT)


CORPUS = bench_corpus()
CORPUS_NAME = corpus_label(CORPUS)


def drop_collection(conn, name: str) -> None:
    """Drop the collection and every version of it."""
    conn.execute("DELETE FROM ragpipe.collections WHERE family = %s", (name,))


def quality_asked() -> bool:
    return os.environ.get("BENCH_QUALITY") == "1"


def cpu_info() -> dict[str, Any]:
    from pipelines.embed.hardware import cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    return {"model": model, "cores": os.cpu_count(), "flags": list(flags),
            "ram_gib": round(psutil.virtual_memory().total / 2**30), "os": platform.system()}


def machine() -> str:
    cpu = cpu_info()
    return (f"{cpu['model']} ({', '.join(cpu['flags']) or 'none of ' + '/'.join(CPU_FLAGS)}), {cpu['cores']} cores, "
            f"{cpu['ram_gib']} GiB RAM, {cpu['os']}")


SCALE_FILES = {"small": "benchmarks.json", "large": "benchmarks-large.json", "xl": "benchmarks-xl.json"}
"""One results file per scale under docs/: each section as its last run left it, and the named figures."""
PAGE = "benchmarks.md"
"""The one page that reads them."""
CORPUS_NOTE = (
    "Synthetic corpora are resampled sentences of the bench corpus (NFCorpus): its documents for embedding; "
    "synthetic documents of its sentences for loading, re-runs and memory; for search, chunks of 2-4 sentences "
    "drawn from a window of 12 neighbouring sentences, whose vector is the normalised mean of the model's "
    "embeddings of its sentences (encoding each synthetic chunk would take days here); queries are the data "
    "set's queries. Machines are shared and noisy: compare ratios from the same run, not absolute figures.")


def write_report(scale: str, seconds: float) -> Path:
    """Merge this run's sections and figures into the scale's results file, and write the page again."""
    quality = " BENCH_QUALITY=1" if quality_asked() else ""
    if os.environ.get("BENCH_SECTIONS"):
        quality += f" BENCH_SECTIONS={os.environ['BENCH_SECTIONS']}"
    run = {"cpu": cpu_info(), "date": date.today().isoformat(), "command": f"BENCH_SCALE={scale}{quality} make bench",
           "minutes": round(seconds / 60, 1)}
    docs = PROJECT_ROOT / "docs"
    path = docs / SCALE_FILES[scale]
    merge_sections(path, run, [{"section": s, "metric": m, "value": v} for s, m, v in results])
    merge_figures(path, run)
    write_page(docs)
    return docs / PAGE


def merge_sections(path: Path, run: dict[str, Any], lines: list[dict[str, str]]) -> None:
    """Each section of `lines` goes into the results file under this run: its lines replace those of the
    same metric; lines of the section that this run did not measure stay, with the run they came from."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    sections = doc.setdefault("sections", {})
    for name in dict.fromkeys(line["section"] for line in lines):
        fresh = [{"metric": line["metric"], "value": line["value"]} for line in lines if line["section"] == name]
        old = sections.get(name, {})
        measured = {line["metric"] for line in fresh}
        kept = [{**line, "date": line.get("date", old.get("date")), "command": line.get("command", old.get("command"))}
                for line in old.get("results", []) if line["metric"] not in measured]
        sections[name] = {**run, "results": fresh + kept}
    doc.setdefault("figures", {})
    path.write_text(json.dumps(doc, indent=1) + "\n")


def merge_figures(path: Path, run: dict[str, Any], named: dict[str, float] | None = None) -> None:
    """Put this run's named figures (default: `figures`) into the scale's JSON file, each with the run it
    came from (run: cpu, date, command)."""
    doc = json.loads(path.read_text()) if path.exists() else {"sections": {}, "figures": {}}
    doc.setdefault("figures", {})
    doc.setdefault("figure_runs", {})
    for key, value in (figures if named is None else named).items():
        doc["figures"][key] = value
        doc["figure_runs"][key] = f"{run['date']}: {run['command']} on {run['cpu']['model']}"
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _from(line: dict[str, str]) -> str:
    """A line kept from an earlier run of its section says which."""
    return f" ({line['date']}, `{line['command']}`)" if line.get("date") else ""


def write_page(docs: Path) -> None:
    """docs/benchmarks.md: every scale's sections, each with its date, machine and command, as tables."""
    lines = ["# Benchmarks", "",
             "Written by `make bench` (tools/benchmarks/) from the results files, one per scale: "
             + ", ".join(f"[{name}]({name})" for name in SCALE_FILES.values() if (docs / name).exists())
             + ". Each section is as its last run left it; named figures are under `figures`.", "", CORPUS_NOTE, ""]
    for scale, name in SCALE_FILES.items():
        if not (docs / name).exists():
            continue
        doc = json.loads((docs / name).read_text())
        lines += [f"## {scale}", ""]
        for section, run in sorted(doc.get("sections", {}).items()):
            cpu = run.get("cpu", {})
            lines += [f"### {section}", "",
                      f"{run.get('date')}, `{run.get('command')}`, {cpu.get('model', '?')} ({cpu.get('cores', '?')} "
                      f"cores, {cpu.get('ram_gib', '?')} GiB)", "", "| metric | result |", "|---|---|",
                      *[f"| {r['metric']} | {r['value']}{_from(r)} |" for r in run.get("results", [])], ""]
    (docs / PAGE).write_text("\n".join(lines))
