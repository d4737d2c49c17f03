"""`ina bench`'s printed table: only the columns that were measured (peak memory on CUDA, decoding with --decode)."""

from __future__ import annotations

import pytest

from ina.bench.report import NO_PEAK_NOTE, Spread, VariantResult, format_table, make_report


def _report(peak: bool, decode: bool) -> dict:
    results = {}
    for index, name in enumerate(("base", "lora")):
        result = VariantResult(
            name, trainable_parameters=index * 100, step_ms=Spread.of([10.0 + index, 12.0])
        )
        result.step_cpu_ms = Spread.of([9.0 + index])
        result.saved_for_backward_bytes = (index + 1) * 2**20
        result.peak_memory_bytes = (index + 3) * 2**20 if peak else None
        result.decode_ms_per_token = Spread.of([2.0 + index]) if decode else None
        result.decode_cpu_ms_per_token = Spread.of([1.5 + index]) if decode else None
        results[name] = result
    return make_report({}, {}, results)


@pytest.mark.parametrize(("peak", "decode"), [(False, False), (True, False), (False, True), (True, True)])
def test_the_table_has_the_measured_columns_only(peak: bool, decode: bool) -> None:
    lines = format_table(_report(peak, decode)).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert ("peak MiB" in header) == peak and ("decode ms/token [IQR]" in header) == decode
    assert header[:3] == ["variant", "trainable", "step ms, median [IQR]"] and "saved MiB" in header
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:4]]
    assert all(len(row) == len(header) for row in rows) and "—" not in rows[1]  # no empty column
    assert (NO_PEAK_NOTE in lines) == (not peak)
    if peak:
        assert rows[1][header.index("peak MiB")] == "4" and rows[1][header.index("peak MiB") + 1] == "1.333"
