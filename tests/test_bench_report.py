"""bench/run_bench.py's report: the before/after table and its ratios come from the measured rows."""

import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import run_bench  # noqa: E402


def row(seconds, cpu, peak, load=1.0, status="ok"):
    return {"status": status, "seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak, "load1_mean": load,
            "load1_max": load, "extra": []}


def test_before_after_table(tmp_path):
    before = {"token_freq.py": row(10.0, 9.0, 0.6e9), "clustering.py": row(20.0, 30.0, 2.6e9)}
    after = {run_bench.PREPARE: row(6.0, 5.0, 2.5e9), "token_freq.py": row(5.0, 3.0, 0.6e9),
             "clustering.py": row(8.0, 12.0, 1.3e9)}

    def totals(rows):
        return {"rows": rows, "total_seconds": sum(r["seconds"] for r in rows.values()),
                "cpu_seconds": sum(r["cpu_seconds"] for r in rows.values()),
                "peak_rss": max(r["peak_rss"] for r in rows.values()), "load1_mean": 1.0}

    res = {"date": "d", "machine": {"cpu": "x", "usable_cpus": 2, "logical_cpus": 2, "ram_gb": 1, "torch": "t",
                                    "torch_threads": 2, "python": "p", "platform": "l", "load1_at_start": 1.0,
                                    "import_only_peak_rss": 0.5e9},
           "versions": {"before": {"ref": "abc", "commit": "abc", "subject": "s"}, "after": {"commit": "def"}},
           "scripts": {"before": totals(before), "after": totals(after)}, "inputs": {}}
    out = tmp_path / "RESULTS.md"
    run_bench.write_report(res, out)
    text = out.read_text()
    line = next(l for l in text.splitlines() if l.startswith("| clustering.py"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:7] == ["20.0", "30.0", "2.60", "8.0", "12.0", "1.30"]
    assert cells[7:10] == ["2.50", "2.50", "2.00"]  # wall, cpu and peak: before / after
    whole = next(l for l in text.splitlines() if l.startswith("| **whole run**"))
    assert "**30.0**" in whole and "**19.0**" in whole  # 10 + 20 before; 6 + 5 + 8 after
    assert "Peak RSS of every script < 1.5 GB: met" in text  # the prepare row (2.5 GB) is not a script
    assert "peak 2.50 GB" in text


def test_committed_results_render(tmp_path):
    """RESULTS.md is what bench/results.json renders to (the committed pair agrees)."""
    out = tmp_path / "RESULTS.md"
    run_bench.write_report(json.loads((ROOT / "bench" / "results.json").read_text()), out)
    assert out.read_text() == (ROOT / "bench" / "RESULTS.md").read_text()


def test_whole_run_table_and_targets(tmp_path):
    """The run_all section: per-step numbers from run_all.json, the whole run's wall time against the
    5-minute target and every step's peak against 1.5 GB."""
    def step(seconds, cpu, peak, status="ok"):
        return {"status": status, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_gb": peak, "error": "", "note": ""}

    fast = {"rc": 0, "jobs": 2, "seconds": 250.0, "cpu_seconds": 450.0, "peak_rss": 1.4e9, "load1_mean": 1.1,
            "load1_max": 1.3, "steps": {"token_freq.py": step(5.0, 4.0, 0.6), "clustering.py": step(9.0, 8.0, 1.2)}}
    slow = {**fast, "jobs": 1, "seconds": 320.0, "steps": {**fast["steps"], "clustering.py": step(9.0, 8.0, 1.6)}}
    res = {"date": "d", "machine": {"cpu": "x", "usable_cpus": 2, "logical_cpus": 2, "ram_gb": 1, "torch": "t",
                                    "torch_threads": 2, "python": "p", "platform": "l", "load1_at_start": 1.0,
                                    "import_only_peak_rss": 0.5e9},
           "cases": {"wholerun": [fast, slow]}, "inputs": {}}
    out = tmp_path / "RESULTS.md"
    run_bench.write_report(res, out)
    text = out.read_text()
    line = next(l for l in text.splitlines() if l.startswith("| clustering.py"))
    assert [c.strip() for c in line.strip("|").split("|")] == ["clustering.py", "9.0", "8.0", "1.20", "9.0", "8.0", "1.60"]
    whole = next(l for l in text.splitlines() if l.startswith("| **whole run**"))
    assert "**250.0**" in whole and "**320.0**" in whole
    assert "`--jobs 2`: whole regeneration < 5 min on 2 cores: met (4.17 min wall" in text
    assert "`--jobs 1`: whole regeneration < 5 min on 2 cores: NOT met (5.33 min wall" in text
    assert "1.5 GB: NOT met by clustering.py" in text
    assert run_bench.PREPARE not in text  # no prepare record: no row

    # run_all.json's prepare record (the cache-filling model load) gets its own row, first, and is not
    # an analysis step: its 2.5 GB does not fail the per-step target
    res["cases"]["wholerun"] = [{**fast, "prepare": step(11.0, 12.0, 2.5)}]
    run_bench.write_report(res, out)
    text = out.read_text()
    rows = [l for l in text.splitlines() if l.startswith("| ")]
    assert rows[2] == f"| {run_bench.PREPARE} | 11.0 | 12.0 | 2.50 |"  # after the header and its rule
    assert "1.5 GB: met." in text


def test_reused_sections_keep_the_date_they_were_measured(tmp_path):
    """--reuse of a results.json that itself carried a section over keeps that section's own date,
    not the date of the run it was carried through."""
    earlier = {"date": "2026-01-02 00:00 UTC", "reused": {"load": "2026-01-01 00:00 UTC"},
               "cases": {"load": {"x": 1}, "tokenise": {"y": 2}}, "scripts": {"after": {"rows": {}}}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    res = {}
    run_bench.reuse_sections(res, path, cases={"wholerun"}, scripts_measured=False)
    assert res["reused"]["load"] == "2026-01-01 00:00 UTC"  # measured then, carried through 01-02
    assert res["reused"]["tokenise"] == "2026-01-02 00:00 UTC"
    assert res["reused"]["scripts"] == "2026-01-02 00:00 UTC"
    assert res["cases"]["load"] == {"x": 1}
