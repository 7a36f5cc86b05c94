"""trainer.analysis.score_table (scripts/score_table.py): the devkit's numbers of evaluation folders, grouped by run
name and decoding; trainer.analysis.duplicates' count of same-class neighbours."""

from __future__ import annotations

import json

import pytest

from trainer.analysis import score_table


def _summary(nds: float, car: float, nms: str | None) -> dict:
    s = {
        "nd_score": nds,
        "mean_ap": car / 2,
        "mean_dist_aps": {"car": car, "pedestrian": 0.0},
        "label_aps": {"car": {"0.5": 0.01, "1.0": 0.1, "2.0": 0.3, "4.0": 0.5}},
        "tp_errors": {"trans_err": 0.8, "scale_err": 0.3, "orient_err": 1.1, "vel_err": 2.0, "attr_err": 0.4},
    }
    if nms:
        s["decoding"] = {"nms": nms}
    return s


def test_rows_and_means_per_run_and_decoding(tmp_path, capsys):
    evals = []
    for seed, nds, car in ((1, 0.24, 0.28), (2, 0.22, 0.26)):
        for folder, nms, bump in (("eval", None, 0.0), ("eval_nms", "circle", 0.06)):
            ev = tmp_path / f"dvd-s{seed}" / folder
            ev.mkdir(parents=True)
            (ev / "metrics_summary.json").write_text(json.dumps(_summary(nds + bump / 3, car + bump, nms)))
            evals.append(ev)
    out = tmp_path / "table.md"
    score_table.main([str(e) for e in evals] + ["--out", str(out)])
    text = out.read_text()
    assert text == capsys.readouterr().out.split("written:")[0].rstrip("\n") + "\n"
    row = score_table.row_of(evals[1])
    assert row["run"] == "dvd" and row["decoding"] == "circle" and row["car AP"] == pytest.approx(0.34)
    assert row["car AP @0.5/1/2/4 m"] == "0.010 / 0.100 / 0.300 / 0.500" and row["step"] == ""
    # the seeds of a run group: car AP mean 0.27 +- 0.01 without NMS, 0.33 +- 0.01 with it
    assert "| dvd | none | 2 | 0.2300 +- 0.0100 | 0.1350 +- 0.0050 | 0.2700 +- 0.0100 |" in text
    assert "| dvd | circle | 2 | 0.2500 +- 0.0100 | 0.1650 +- 0.0050 | 0.3300 +- 0.0100 |" in text


def test_a_folder_without_a_summary_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no metrics_summary.json"):
        score_table.row_of(tmp_path)


def test_duplicate_share_counts_same_class_neighbours_above_the_score():
    from trainer.analysis import duplicates

    def det(x, y, name, score):
        return {"translation": [x, y, 0.0], "detection_name": name, "detection_score": score}

    results = {
        "a": [det(0, 0, "car", 0.9), det(0.6, 0, "car", 0.5), det(0, 0, "pedestrian", 0.8), det(5, 0, "car", 0.4)],
        "b": [det(0, 0, "car", 0.3), det(0.2, 0, "car", 0.05)],  # the second is below the score threshold
    }
    assert duplicates.duplicate_share(results, "car", 0.1, 1.0) == (4, 2)  # the pair 0.6 m apart in "a"
    assert duplicates.duplicate_share(results, "car", 0.1, 0.5) == (4, 0)
    assert duplicates.duplicate_share(results, None, 0.1, 1.0) == (5, 2)  # the pedestrian is no car's neighbour
    assert duplicates.duplicate_share(results, "car", 0.01, 1.0) == (5, 4)
