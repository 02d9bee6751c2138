"""The run directory's file names and columns: one definition, shared by writers and readers."""

import subprocess
import sys
from dataclasses import fields


def test_score_rows_are_the_score_columns():
    from hant_trt.scores import ScoreRow
    from hant_trt.runfiles import SCORE_COLUMNS

    assert [f.name for f in fields(ScoreRow)] == SCORE_COLUMNS


def test_the_search_needs_a_subset_of_the_written_latency_columns():
    from hant_trt.runfiles import LATENCY_COLUMNS, LATENCY_NEEDED

    assert set(LATENCY_NEEDED) <= set(LATENCY_COLUMNS)


def test_names_and_tables_load_without_torch():
    code = ("import sys, hant_trt.runfiles, hant_trt.rundir, hant_trt.search.tables; "
            "sys.exit('torch' in sys.modules or 'onnx' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
