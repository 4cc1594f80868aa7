"""The generated tables in docs/ match the bench JSON they are rendered from (bench/docs_tables.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from bench import docs_tables

BLOCK = "<!-- bench-table: scaling -->\nanything\n<!-- /bench-table -->\n"


def test_the_pages_are_up_to_date_with_bench_results():
    assert docs_tables.main(["--check"]) == 0


def test_a_changed_measurement_makes_the_page_stale_and_rendering_takes_it_in(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(docs_tables.RESULTS / "scaling.json", results / "scaling.json")
    monkeypatch.setattr(docs_tables, "RESULTS", results)
    page = tmp_path / "page.md"
    page.write_text(f"# Page\n\nprose before\n\n{BLOCK}\nprose after\n")
    assert docs_tables.main(["--check", str(page)]) == 1  # the hand-written body is not the rendering
    assert f"{page}: scaling" in capsys.readouterr().err
    assert docs_tables.main([str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Page\n\nprose before\n\n") and text.endswith("\nprose after\n")
    result = json.loads((results / "scaling.json").read_text())
    assert f"commit `{result['commit'][:7]}`" in text
    ev2 = next(r for r in result["rows"] if r["stage"] == "evaluate" and r["workers"] == 2)
    assert f"| 2 | {ev2['seconds']:.2f} |" in text
    assert docs_tables.main(["--check", str(page)]) == 0

    ev2["seconds"] *= 2  # a new measurement: the page no longer says what the JSON says
    (results / "scaling.json").write_text(json.dumps(result))
    assert docs_tables.main(["--check", str(page)]) == 1
    docs_tables.main([str(page)])
    assert f"| 2 | {ev2['seconds']:.2f} |" in page.read_text()


def test_the_cold_start_block_shows_the_json_cells():
    result = json.loads((docs_tables.RESULTS / "cold_start.json").read_text())
    text = docs_tables.render("cold_start", docs_tables.DOCS / "results.md")
    for dataset in result["results"]:
        for model, cells in dataset["models"].items():
            assert f"| {model} | {cells['test_warm/ndcg@10']['t95']} | {cells['test_cold/ndcg@10']['t95']} |" in text


@pytest.mark.parametrize("name, message", [("nosuch", "unknown bench table 'nosuch'"),
                                           ("paper_table", "paper_table.json, which does not exist")])
def test_a_block_without_renderer_or_json_fails_naming_the_page(tmp_path, monkeypatch, name, message):
    monkeypatch.setattr(docs_tables, "RESULTS", tmp_path)
    page = tmp_path / "page.md"
    page.write_text(BLOCK.replace("scaling", name))
    with pytest.raises(SystemExit, match=message) as err:
        docs_tables.main(["--check", str(page)])
    assert str(page) in str(err.value)


def test_a_view_of_a_prefixed_result_finds_the_script_s_view_renderer():
    assert docs_tables.renderer("index_scale_deep/scanned") is docs_tables.RENDERERS["index_scale/scanned"]
    assert docs_tables.renderer("sweep_default_ml100k") is docs_tables.RENDERERS["sweep"]
    assert docs_tables.renderer("paper_table/summary") is docs_tables.RENDERERS["paper_table/summary"]
    assert docs_tables.renderer("sweep_default_ml100k/nosuch") is None and docs_tables.renderer("nosuch") is None


def test_the_heading_names_the_cpu_kernels_a_result_was_measured_with():
    """The same seed trains to other numbers with other CPU kernels (AVX2 against AVX512), so a new result records
    torch's kernels and its heading says them; a result recorded before that renders as it always did."""
    import torch

    from bench.machine import describe

    machine = describe()
    assert machine["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    made = {"commit": "abc1234def", "dirty": False, "date": "2026-12-02T00:00:00",
            "machine": {"cpu": "AMD EPYC", "cpus": 2, "cpus_usable": 2, "torch": "2.13.0+cpu"}}
    old = "*Measured at commit `abc1234` on 2026-12-02, AMD EPYC (2 of 2 CPUs, torch 2.13.0+cpu).*"
    assert docs_tables.conditions(made) == old
    made["machine"]["cpu_kernels"] = "AVX2"
    assert docs_tables.conditions({"made": made}) == old.replace("CPUs,", "CPUs, AVX2 kernels,")
