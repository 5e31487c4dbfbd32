"""Twins of the planted model break exactly the claims their ground truth declares (issue 22).

Each twin (``--model planted:<twin>``, common/planted_names.py) is built so that named claims are
false by construction. Here the scripts that decide those claims run on the twin at reduced size
(tests/twin_run.py), the report's records are evaluated from their saved results, and every claim
of those scripts must read ``planted: fails`` if the twin's ground truth lists it and
``planted: holds`` otherwise. The plain planted model is the control (tests/test_report.py, on the
committed demo results: every claim holds). The copying twin, which breaks ten claims over ten
scripts, has its own file (tests/test_twin_copying.py) so the two test workers share the load.
"""

import pytest

from twin_run import assert_statuses, twin_records


@pytest.mark.parametrize("twin", ["positional", "skew", "no-mlp0"])
def test_twin_fails_exactly_its_declared_claims(twin, tmp_path, planted_cache):
    assert_statuses(twin, *twin_records(twin, tmp_path))
