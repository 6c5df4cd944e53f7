"""docs/results.md and the README's generated blocks are what benches/results_doc.py writes from the committed runs
(a hand edit, or a run committed without regenerating, fails here)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("results_doc", ROOT / "benches" / "results_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_documents_are_up_to_date():
    built = _module().build()
    for path, text in built.items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is out of date: run python benches/results_doc.py"


def test_the_headline_reports_every_method_against_npdg_with_intervals():
    doc = _module()
    models = {}
    for model_dir in sorted(p for p in doc.FAIR.iterdir() if p.is_dir()):
        runs = doc.load_model_runs(model_dir)
        if "npdg" in runs:
            models[model_dir.name] = (doc.method_rows(runs), doc.paired_vs_npdg(model_dir, runs))
    assert "deeplabv3plus_r18" in models
    text = doc.headline(models)
    rows, paired = models["deeplabv3plus_r18"]
    assert {r["method"] for r in rows} >= {"erm", "npdg"} and set(paired) == {r["method"] for r in rows} - {"npdg"}
    for r in rows:
        assert r["definitions"] == ["standard"] and r["steps"] == [260]
    for method, p in paired.items():
        uns = p["metrics"]["unseen_mean"]
        assert f"| {method} |" in text and f"{uns['mean_diff']:+.2f}" in text


def test_the_experiments_page_lists_every_comparison_with_its_definition():
    doc = _module()
    text = doc.experiments()
    paths = [p for p in doc.RESULTS.rglob("compare*.json") if doc.FAIR not in p.parents]
    assert len(paths) > 100
    for path in paths:
        row = next(line for line in text.splitlines() if line.startswith(f"| [{path.stem}]("))
        definition = __import__("json").loads(path.read_text()).get("miou_definition", "labels_present")
        assert f"| {definition} |" in row, row
    assert "| labels_present |" in text and "| standard |" in text
