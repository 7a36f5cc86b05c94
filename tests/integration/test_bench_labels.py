"""``make bench`` (scripts/bench_labels.py) on the tiny world: the report keeps its keys and adds the DINOv2 floor."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("open3d")


def test_bench_reports_parts_and_the_dino_floor(synth_tiny, tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_labels

    data = tmp_path / "data"
    (data / "synthetic").mkdir(parents=True)
    (data / "synthetic" / "tiny-seed0").symlink_to(synth_tiny)  # the session's tiny world: not generated again
    monkeypatch.setenv("BEVLABELS_DATA", str(data))
    out = tmp_path / "bench.json"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # what the script sets
    environ = dict(os.environ)
    tiny_vit = (
        "+features.config_overrides={num_hidden_layers:1,hidden_size:32,num_attention_heads:2,intermediate_size:64}"
    )
    bench_labels.main(["--preset", "tiny", "--n-workers", "1", "--floor-keyframes", "2", "--limit-scenes", "1",
                       "--json", str(out), "features.weights=random", "features.image_height=56", tiny_vit])  # fmt: skip
    # distributed's Nanny writes OMP_NUM_THREADS=1 & co. into the process environment; the stage puts it back, so
    # later subprocesses (training, the oneDNN checks of tests/unit/test_pointwise.py) keep their threads
    nanny = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
    assert {k: os.environ.get(k) for k in nanny} == {k: environ.get(k) for k in nanny}
    r = json.loads(out.read_text())
    assert r["keyframes"] == 4 and r["keyframes_per_s"] > 0  # today's keys (one scene of the tiny world)
    assert set(r["parts"]) >= {"read", "accumulate", "decode", "features", "project_pool", "lidar_px", "write"}
    assert abs(sum(p["pct"] for p in r["parts"].values()) - 100) < 1e-6
    floor = r["dino_floor"]
    assert floor["keyframe_batch"] == 1  # keyframe_batch=auto on a CPU, as the stage ran
    assert floor["keyframes_timed"] == 2 and floor["keyframes_per_s"] == pytest.approx(1 / floor["s_per_keyframe"])
    assert r["ratio_to_floor"] == pytest.approx(r["keyframes_per_s"] / floor["keyframes_per_s"])
    assert 0 < r["features_pct_of_worker_wall"] < 100
    assert r["store_bytes_per_keyframe"] > 0 and r["peak_rss_mb_per_worker"] > 0
