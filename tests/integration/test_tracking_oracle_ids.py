"""trainer.eval.nusc_tracking.oracle_id_results (scripts/tracking_oracle_ids.py): the true track ids given to detections, the ceiling of association.

On the tiny synthetic world, GT boxes as detections inherit their own instance tokens; a detection moved beyond
2 m, a second detection of an already taken box and one of another class get ids of their own; and the
devkit scores GT boxes with oracle ids as perfect tracks.
"""

from __future__ import annotations


def _gt_detections(nusc, tokens):
    from nuscenes.eval.tracking.utils import category_to_tracking_name

    out, inst = {}, {}
    for tok in tokens:
        dets = []
        for a in nusc.get("sample", tok)["anns"]:
            ann = nusc.get("sample_annotation", a)
            name = category_to_tracking_name(ann["category_name"])
            if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:  # the devkit drops those GT boxes
                continue
            dets.append(
                {
                    "sample_token": tok,
                    "translation": list(ann["translation"]),
                    "size": list(ann["size"]),
                    "rotation": list(ann["rotation"]),
                    "velocity": [0.0, 0.0],
                    "detection_name": name,
                    "detection_score": 0.9,
                    "attribute_name": "",
                }
            )
            inst[(tok, len(dets) - 1)] = ann["instance_token"]
        out[tok] = dets
    return out, inst


def test_gt_boxes_inherit_their_instances_and_misses_get_their_own(synth_tiny):
    from bevlabels.datasets.nuscenes import NuScenesDataset
    from trainer.eval.nusc_tracking import oracle_id_results as oracle_tracking_results

    nusc = NuScenesDataset(synth_tiny, version="v1.0-mini").nusc
    tok = next(s["token"] for s in nusc.sample if len(s["anns"]) >= 3)
    dets, inst = _gt_detections(nusc, [tok])
    assert len(dets[tok]) >= 2
    res = oracle_tracking_results(dets, nusc)[tok]
    assert [b["tracking_id"] for b in res] == [inst[(tok, i)] for i in range(len(dets[tok]))]

    d0 = dict(dets[tok][0])
    moved = dict(d0, translation=[d0["translation"][0] + 2.5, *d0["translation"][1:]], detection_score=0.95)
    twin = dict(d0, detection_score=0.5)  # a second, worse box on the same object
    other = "pedestrian" if d0["detection_name"] != "pedestrian" else "car"
    wrong = dict(d0, detection_name=other, detection_score=0.99)
    res = oracle_tracking_results({tok: [*dets[tok], moved, twin, wrong]}, nusc)[tok]
    by_score = {b["tracking_score"]: b["tracking_id"] for b in res}
    assert by_score[0.95].startswith("unmatched-") and by_score[0.5].startswith("unmatched-")
    assert res[0]["tracking_name"] == other and res[0]["tracking_id"] != inst[(tok, 0)]
    ids = [b["tracking_id"] for b in res]
    assert len(set(ids)) == len(ids), "every detection's id is its own within a keyframe"


def test_gt_with_oracle_ids_scores_perfect_tracks(synth_tiny, tmp_path):
    from bevlabels.datasets.nuscenes import NuScenesDataset
    from trainer.eval.coverage import split_samples
    from trainer.eval.nusc_tracking import oracle_id_results as oracle_tracking_results
    from trainer.eval.nusc_tracking import run_tracking_eval
    from trainer.nusc_results import result_meta, write_results

    nusc = NuScenesDataset(synth_tiny, version="v1.0-mini").nusc
    tokens = [t for ts in split_samples(nusc, "mini_val").values() for t in ts]
    dets, _ = _gt_detections(nusc, tokens)
    path = write_results(
        tmp_path / "t.json", {"meta": result_meta(False, True), "results": oracle_tracking_results(dets, nusc)}
    )
    s = run_tracking_eval(nusc, path, "mini_val", tmp_path / "eval")
    assert s["amota"] >= 0.99 and s["ids"] == 0, (s["amota"], s["ids"])
