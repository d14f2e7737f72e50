"""The docs point only inside the repository, at files that exist: every Markdown link, every
`experiments/...`, `configs/...`, `jaxdist/...`, `tests/...` and `docs/...` path they name, so a reader
can rerun every command and open every raw result. Catches a renamed script or a deleted JSONL that a
doc still cites, and references to files outside the repository."""
import re

import pytest

from tests.conftest import REPO

DOCS = sorted([REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("experiments/**/*.md"),
               REPO / "deploy" / "README.md"])
REPO_PATH = re.compile(r"(?<![\w./-])((?:experiments|configs|jaxdist|tests|docs|deploy)/[\w./-]*\w)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_doc_references_exist_inside_the_repository(doc):
    text = doc.read_text()
    assert "../shared" not in text and "/work/" not in text, f"{doc.name} points outside the repository"
    links = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)]
    missing = [t for t in links if t and not t.startswith(("http://", "https://"))
               and not (doc.parent / t).exists()]
    missing += [p for p in REPO_PATH.findall(text) if not (REPO / p).exists() and "*" not in p]
    assert not missing, f"{doc.relative_to(REPO)} names files that do not exist: {sorted(set(missing))}"


RESULTS = sorted(REPO.glob("experiments/results/*/results.md"))


@pytest.mark.parametrize("results", RESULTS, ids=lambda p: p.parent.name)
def test_benchmarks_quote_the_experiment_tables_as_written(results):
    """docs/benchmarks.md copies each experiment's table row for row, with its date and machine: a rerun
    that changes results.md without updating the docs (or a hand-edited number) fails here."""
    doc = (REPO / "docs" / "benchmarks.md").read_text().splitlines()
    lines = results.read_text().splitlines()
    quoted = [l for l in lines if l.startswith("| ") or l.startswith(("- Date:", "- Machine:", "- Versions:"))]
    assert quoted and not [l for l in quoted if l not in doc], f"docs/benchmarks.md does not quote {results}"
