"""``make bench`` (scripts/bench_labels.py) on the tiny world: the report keeps its keys and adds the DINOv2 floor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("open3d")

#: what distributed's Nanny writes into its process's environment (OMP_NUM_THREADS=1 & co.)
NANNY = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")

#: ``python scripts/bench_labels.py ARGS``, then the Nanny's variables before and after it, as JSON on the last line
PROBE = f"""
import json, os, runpy
before = {{k: os.environ.get(k) for k in {NANNY!r}}}
runpy.run_path("scripts/bench_labels.py", run_name="__main__")
print(json.dumps([before, {{k: os.environ.get(k) for k in {NANNY!r}}}]))
"""


def test_bench_reports_parts_and_the_dino_floor(synth_tiny, tmp_path):
    data = tmp_path / "data"
    (data / "synthetic").mkdir(parents=True)
    (data / "synthetic" / "tiny-seed0").symlink_to(synth_tiny)  # the session's tiny world: not generated again
    out = tmp_path / "bench.json"
    tiny_vit = (
        "+features.config_overrides={num_hidden_layers:1,hidden_size:32,num_attention_heads:2,intermediate_size:64}"
    )
    args = ["--preset", "tiny", "--n-workers", "1", "--floor-keyframes", "2", "--limit-scenes", "1",
            "--json", str(out), "features.weights=random", "features.image_height=56", tiny_vit]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), BEVLABELS_DATA=str(data), TOKENIZERS_PARALLELISM="false")
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    # distributed's Nanny writes OMP_NUM_THREADS=1 & co. into the process environment; the stage puts it back, so
    # the later subprocesses of a process that ran it (training, in a test session the oneDNN checks of
    # tests/unit/test_pointwise.py) keep their threads
    before, after = json.loads(r.stdout.strip().splitlines()[-1])
    assert after == before
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
