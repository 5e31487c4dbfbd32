"""The copying twin (L1H5 attends to itself and earlier copies) breaks exactly its declared claims:
every self-suppression claim and those that rest on it (tests/test_twin_verdicts.py explains)."""

from twin_run import assert_statuses, twin_records


def test_copying_twin_fails_exactly_its_declared_claims(tmp_path, planted_cache):
    assert_statuses("copying", *twin_records("copying", tmp_path))
