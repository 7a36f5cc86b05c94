"""``python -m trainer.track``: a detection results file tracked and scored, bad files refused with the fault named.

The target of issue 34: GT boxes of the `small` world's mini_val degraded as a camera detector degrades them
(:mod:`trainer.analysis.degraded_gt`: centre jitter 0.3 m per axis, size 5%, yaw 0.05 rad, velocity 0, 5% dropped,
3 false positives a keyframe at scores 0.05-0.3), on two jitter seeds held out from the choice of the tracker's
defaults: the Kalman tracker scores AMOTA >= 0.90 with
at most a quarter of the greedy tracker's ID switches. The world's two mini_val scenes are generated here with one
small camera (the boxes and their LiDAR point counts are the `small` world's own: cameras only change the
visibility tokens, which tracking does not read).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import nuscenes_dataset  # tests/conftest.py

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_val(tmp_path_factory) -> Path:
    from bevlabels.synthetic import SynthConfig, generate

    cfg = SynthConfig.from_preset(
        "small", seed=0, train_scenes=0, cameras=("CAM_FRONT",), image_width=64, image_height=32
    )
    out = tmp_path_factory.mktemp("small_val") / "small-val"
    generate(cfg, out, log=lambda msg: None)
    return out


def _degraded(root: Path, seed: int, path: Path) -> Path:
    from nuscenes import NuScenes

    from trainer.analysis.degraded_gt import degraded_gt_results
    from trainer.nusc_results import write_results

    nusc = NuScenes(version="v1.0-mini", dataroot=str(root), verbose=False)
    return write_results(path, degraded_gt_results(nusc, "mini_val", seed))


@pytest.mark.parametrize("seed", [3, 4])  # the tracker's defaults were chosen on seeds 1 and 2 (results/tracking.md)
def test_kalman_tracks_degraded_gt_far_better_than_greedy(small_val, tmp_path, seed):
    from trainer.track import track

    det = _degraded(small_val, seed, tmp_path / "det.json")
    ds = nuscenes_dataset(small_val)
    kalman = track(det, ds, "kalman", out=tmp_path / "kalman", ceiling=False, pictures=False)
    greedy = track(det, ds, "greedy", out=tmp_path / "greedy", ceiling=False, pictures=False)
    assert kalman["amota"] >= 0.90, (kalman["amota"], kalman["ids"])
    assert kalman["ids"] <= greedy["ids"] / 4, (kalman["ids"], greedy["ids"])
    saved = json.loads((tmp_path / "kalman" / "metrics_summary.json").read_text())
    assert saved["tracker"] == "kalman" and saved["amota"] == kalman["amota"]
    assert (tmp_path / "kalman" / "results_nusc_tracking.json").is_file()


def test_bad_detection_files_are_refused_naming_the_fault(small_val, tmp_path):
    from trainer.track import DetectionsFileError, track

    ds = nuscenes_dataset(small_val)
    good = json.loads(_degraded(small_val, 0, tmp_path / "det.json").read_text())
    token = next(iter(good["results"]))

    def refused(data, match, name="bad.json"):
        p = tmp_path / name
        p.write_text(data if isinstance(data, str) else json.dumps(data))
        with pytest.raises(DetectionsFileError, match=match):
            track(p, ds, "kalman", out=tmp_path / "out", ceiling=False, pictures=False)

    refused("{not json", "not JSON")
    refused({"meta": {}}, "results")
    no_score = json.loads(json.dumps(good))
    del no_score["results"][token][0]["detection_score"]
    refused(no_score, rf"results\['{token}'\]\[0\] lacks \['detection_score'\]")
    outside = json.loads(json.dumps(good))
    outside["results"]["not-a-sample"] = []
    refused(outside, "not keyframes of split mini_val, e.g. not-a-sample")
    missing = json.loads(json.dumps(good))
    del missing["results"][token]
    refused(missing, f"miss 1 keyframe.*e.g. {token}")
    with pytest.raises(DetectionsFileError, match="no such detections file"):
        track(tmp_path / "absent.json", ds, "kalman", out=tmp_path / "out")


def test_the_command_line_tracks_a_file_with_the_oracle_ceiling_beside(small_val, tmp_path):
    """The Hydra entry point, as a user runs it: dataset and tracker from the command line, the ceiling printed."""
    det = _degraded(small_val, 5, tmp_path / "det.json")
    r = subprocess.run(
        [sys.executable, "-m", "trainer.track", f"detections={det}", f"dataset.root={small_val}", "tracker=kalman",
         f"out={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "of the oracle-id ceiling" in r.stdout, r.stdout[-2000:]
    summary = json.loads((tmp_path / "out" / "metrics_summary.json").read_text())
    assert summary["oracle_ids"]["amota"] >= summary["amota"] - 0.02
    # the true ids on the tracker's own boxes: scored on exactly the boxes it wrote, so no more boxes than those
    assert "the true ids on its own boxes" in r.stdout, r.stdout[-2000:]
    own = summary["oracle_ids_on_tracks"]
    tracked = json.loads((tmp_path / "out" / "results_nusc_tracking.json").read_text())["results"]
    relabelled = json.loads((tmp_path / "out" / "oracle_ids_on_tracks" / "tracking_oracle_ids.json").read_text())
    assert {t: sorted(b["translation"] for b in v) for t, v in tracked.items()} == {
        t: sorted(b["translation"] for b in v) for t, v in relabelled["results"].items()
    }
    assert own["amota"] >= summary["amota"] - 0.02 and own["amota"] <= summary["oracle_ids"]["amota"] + 0.02
    assert (tmp_path / "out" / "png" / "scene-0103.png").is_file()
