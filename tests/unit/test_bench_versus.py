"""The side-by-side bench's own logic, without Orthanc or a runtime: ratios, the Markdown table,
the plot, and the generated data that both servers receive."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from infra.bench import qido
from infra.bench.versus_orthanc import (
    FIGURE,
    HOOKS_OFF,
    HOOKS_ON,
    NONE,
    ORTHANC,
    TIMES,
    Config,
    Measurements,
    Point,
    ct_series,
    format_value,
    load_results,
    markdown_table,
    part10_size,
    plot,
    save_results,
    speed_ratio,
    study_datasets,
)


@pytest.mark.parametrize(
    ("figure", "ours", "theirs", "ratio"),
    [
        ("stow_ct", 10.0, 40.0, 0.25),  # throughput: ours / theirs
        ("retrieve", 300.0, 150.0, 2.0),
        ("frame", 10.0, 15.0, 1.5),  # latency: theirs / ours
        ("qido_patient", 52.0, 3.1, 3.1 / 52.0),
    ],
)
def test_ratio_above_one_means_we_are_faster(figure: str, ours: float, theirs: float, ratio: float) -> None:
    # Given a figure measured on both sides
    # When it becomes a ratio
    # Then it is the speed-up, whichever way the unit points
    assert speed_ratio(FIGURE[figure], ours, theirs) == pytest.approx(ratio)


@pytest.mark.parametrize(("ours", "theirs"), [(0.0, 3.0), (3.0, 0.0), (-1.0, 3.0)])
def test_ratio_refuses_figures_that_are_not_positive(ours: float, theirs: float) -> None:
    with pytest.raises(ValueError, match="frame: figures must be positive"):
        speed_ratio(FIGURE["frame"], ours, theirs)


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [(285.4, "inst/s", "285 inst/s"), (10.66, "ms", "10.7 ms"), (0.456, "ms", "0.46 ms")],
)
def test_values_keep_three_significant_digits_at_most(value: float, unit: str, text: str) -> None:
    assert format_value(value, unit) == text


def _results() -> dict[str, Measurements]:
    return {
        ORTHANC: {
            Point("stow_ct", 35): 285.0,
            Point("qido_patient", 10_000): 3.1,
            Point("qido_patient", 1_000): 3.0,
            Point("frame", 1): 17.5,
        },
        HOOKS_OFF: {
            Point("stow_ct", 35): 71.25,
            Point("qido_patient", 10_000): 5.9,
            Point("qido_patient", 1_000): 5.0,
            Point("frame", 1): 13.3,
        },
        HOOKS_ON: {Point("stow_ct", 35): 10.7, Point("qido_patient", 10_000): 52.0, Point("frame", 1): 16.0},
    }


def test_table_has_each_figure_its_ratios_and_the_goal() -> None:
    # Given Orthanc's figures and ours with the hooks off and on (one point missing)
    # When the table is written
    table = [row.replace(TIMES, "*").replace(NONE, "-") for row in markdown_table(_results()).splitlines()]

    # Then each row has both sides, both ratios and the goal for hooks off, in the
    # order of the figures and by size, and a missing point is a dash (here * stands for the
    # multiplication sign and - for the en dash)
    assert table[0].startswith("| Operation | Orthanc | Ours, hooks off | Ratio, hooks off |")
    assert table[2] == (
        "| STOW-RS, CT 512 x 512, 7 per request | 285 inst/s | 71.2 inst/s | 0.25* | 10.7 inst/s | 0.04* "
        "| ≥ 0.25* met |"
    )
    assert table[3] == ("| QIDO-RS PatientID, 1,000 studies | 3.0 ms | 5.0 ms | 0.60* | - | - | ≥ 0.5* met |")
    assert table[4] == (
        "| QIDO-RS PatientID, 10,000 studies | 3.1 ms | 5.9 ms | 0.53* | 52.0 ms | 0.06* | ≥ 0.5* met |"
    )
    assert table[5] == (
        "| One frame, 512 x 512 native | 17.5 ms | 13.3 ms | 1.32* | 16.0 ms | 1.09* | ≥ 1.5* **missed** |"
    )
    assert len(table) == 6


def test_plot_is_a_png(tmp_path: Path) -> None:
    # Given latencies at several sizes
    results = _results()
    results[ORTHANC][Point("metadata", 100)] = 22.0
    results[HOOKS_OFF][Point("metadata", 100)] = 11.6
    path = tmp_path / "images" / "plot.png"

    # When the plot is drawn
    plot(results, path)

    # Then a PNG file is written, its folder made
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_figures_draw_the_same_table_again(tmp_path: Path) -> None:
    # Given the figures of a run, saved as it ends
    results, config = _results(), Config.of(quick=True)
    save_results(tmp_path / "figures.json", results, config, 123.0)

    # When they are read back (python -m infra.bench.versus_orthanc --from-results)
    loaded, loaded_config, took_s = load_results(tmp_path / "figures.json")

    # Then the table, the settings and the duration are the ones measured
    assert markdown_table(loaded) == markdown_table(results)
    assert (loaded_config, took_s) == (config, 123.0)


def test_instances_go_out_as_part10_files() -> None:
    # Given the generated CT series
    series = ct_series(2, size=64)

    # When the client encodes them (dicomweb-client calls pydicom.dcmwrite)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, series[0])
    data = buffer.getvalue()

    # Then each is a Part 10 file (preamble, "DICM"), as a modality sends it, of the size counted
    assert data[128:132] == b"DICM"
    assert part10_size(series[:1]) == len(data)
    assert series[0].SeriesInstanceUID == series[1].SeriesInstanceUID
    assert (series[0].Rows, series[0].Columns) == (64, 64)


def test_orthanc_receives_the_studies_our_index_is_loaded_with() -> None:
    # Given the study plans whose index items are loaded into our store
    plans = qido.plan_studies(8, 2)

    # When they are made into instances for Orthanc
    datasets = list(study_datasets(plans))

    # Then every study's instances carry the attributes the queries match on, the same values
    assert len(datasets) == 16
    for plan in plans:
        mine = [ds for ds in datasets if ds.StudyInstanceUID == plan.uid]
        assert {ds.SeriesInstanceUID for ds in mine} == {uid for uid, _, _ in plan.series}
        for ds in mine:
            assert ds.PatientID == plan.study_json["00100020"]["Value"][0]
            assert ds.StudyDate == plan.study_json["00080020"]["Value"][0]
            assert str(ds.PatientName) == plan.study_json["00100010"]["Value"][0]["Alphabetic"]
            assert ds.preamble == bytes(128)


def test_quick_runs_qido_at_three_small_sizes() -> None:
    assert Config.of(quick=True).study_sizes == (10, 30, 300)
    assert Config.of(quick=False).study_sizes == (100, 1_000, 10_000)
    assert Config.of(quick=False, studies=2_000).study_sizes == (20, 200, 2_000)
