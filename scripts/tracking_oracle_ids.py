"""How far association can take a detector's boxes: the devkit's AMOTA with the *true* track ids given to them.

    python scripts/tracking_oracle_ids.py outputs/bench_train/dvd-1500/dvd_proposals/eval \
        --root data/synthetic/small-seed0 [--version v1.0-mini] [--eval-set mini_val] [--out DIR]

Reads ``results_nusc.json`` (the detection results ``trainer.evaluate`` wrote, global frame) in an evaluation
folder. In each keyframe, each detection of a tracking class, best score first, takes the nearest GT box of its
class not yet taken whose centre lies within 2 m in the ground plane (``tracking_nips_2019``'s ``dist_th_tp``,
the distance at which ``TrackingEval`` counts a match) and inherits that box's ``instance_token`` as its track
id; a detection with no such box gets an id of its own (it is a false positive to every tracker). The devkit's
``TrackingEval`` then scores these tracks.

No tracker knows the truth, so this is the ceiling of association on these detections, not a result: what is left
below AMOTA 1 is the detector's (missed boxes, false positives, their scores), not the tracker's. If it is
below a target, no association (greedy or the instance bank) can reach the target with the same detections. The
folder's own tracking of the same detections, when it has one (``tracking/metrics_summary.json``), is
printed beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path, help="an evaluation folder holding results_nusc.json")
    ap.add_argument("--root", type=Path, required=True, help="the nuScenes-format dataset root")
    ap.add_argument("--version", default="v1.0-mini")
    ap.add_argument("--eval-set", default="mini_val")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: <eval_dir>/tracking_oracle_ids)")
    args = ap.parse_args(argv)

    from nuscenes import NuScenes

    from trainer.eval.nusc_tracking import format_tracking_table, oracle_ceiling

    det_path = args.eval_dir / "results_nusc.json"
    if not det_path.is_file():
        print(f"error: {det_path} not found (run `python -m trainer.evaluate ckpt=...` first)", file=sys.stderr)
        return 2
    with open(det_path) as f:
        det = json.load(f)
    nusc = NuScenes(version=args.version, dataroot=str(args.root), verbose=False)
    out = args.out or args.eval_dir / "tracking_oracle_ids"
    summary = oracle_ceiling(nusc, det["results"], det["meta"], args.eval_set, out)
    print("oracle association (true ids given to the detections):")
    print(format_tracking_table(summary))
    greedy = args.eval_dir / "tracking" / "metrics_summary.json"
    if greedy.is_file():
        g = json.loads(greedy.read_text())
        print(f"the folder's own tracking of the same detections: AMOTA {g['amota']:.4f}, IDS {g['ids']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
