"""``features=synthetic_oracle`` on the tiny synthetic world: label maps beside the images, oracle features that
separate classes, and a label store that records them as an oracle and pools them where the objects are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bevlabels import geometry as g

pytest.importorskip("open3d")

TINY_ORACLE = ["features=synthetic_oracle", "features.image_height=56"]


@pytest.fixture(scope="module")
def tiny_ds(synth_tiny):
    from bevlabels.datasets.nuscenes import NuScenesDataset

    return NuScenesDataset(synth_tiny, version="v1.0-mini")


@pytest.fixture(scope="module")
def oracle():
    from bevlabels.features import build_extractor

    return build_extractor(backend="synthetic_oracle", image_height=56)


def test_label_maps_lie_beside_the_images_and_match_the_render(tiny_ds, synth_tiny):
    """Every camera image has its label map; agent pixels carry their agent's class, the ground and sky theirs."""
    from bevlabels.synthetic.generate import ORACLE_CLASSES, load_world, oracle_path, read_oracle

    frame = tiny_ds.keyframes(tiny_ds.scenes()[-1])[1]
    world = load_world(synth_tiny, frame.scene)
    seen = set()
    for cam in frame.cameras:
        cls, inst = read_oracle(oracle_path(cam.image_path))
        assert cls.shape == (cam.height, cam.width)
        agents = inst >= 0
        assert (cls[agents] >= 3).all() and (cls[~agents] < 3).all()  # instances are agents, stuff is not
        want = np.array([ORACLE_CLASSES.index(world.agents[i].cls) for i in inst[agents]])
        assert (cls[agents] == want).all()
        seen |= {ORACLE_CLASSES[c] for c in np.unique(cls)}
    assert {"sky", "ground", "car", "pedestrian"} <= seen, seen
    # the devkit's tables list no oracle file: it is invisible to the devkit
    assert "oracle/" not in (Path(synth_tiny) / "v1.0-mini" / "sample_data.json").read_text()


def test_oracle_features_separate_classes(tiny_ds, oracle):
    """Patches of one class are more alike (cosine) than patches of two classes; the grid is DINOv2-S's."""
    frame = tiny_ds.keyframes(tiny_ds.scenes()[-1])[2]
    inputs = oracle.load_inputs(frame)
    feats = oracle.encode_cameras(inputs)  # N x (384, h, w)
    cam = frame.cameras[0]
    assert feats[0].shape == (384, *reversed(oracle.feature_size(cam.width, cam.height)))
    vecs, labels = [], []
    p = oracle.patch_size
    for lab, f in zip(inputs, feats):
        w_in, h_in = oracle.input_size(lab.shape[2], lab.shape[1])
        cls = torch.nn.functional.interpolate(lab[None, :1].float(), size=(h_in, w_in), mode="nearest")[0, 0].long()
        h, w = f.shape[1:]
        blocks = cls.reshape(h, p, w, p).permute(0, 2, 1, 3).reshape(h, w, p * p)
        pure = (blocks == blocks[..., :1]).all(-1)  # patches of a single class
        vecs.append(f.permute(1, 2, 0)[pure])
        labels.append(blocks[..., 0][pure])
    v = torch.nn.functional.normalize(torch.cat(vecs), dim=1)
    y = torch.cat(labels)
    assert len(torch.unique(y)) >= 3, torch.unique(y)
    sim = v @ v.T
    same = y[:, None] == y[None, :]
    off = ~torch.eye(len(y), dtype=torch.bool)
    within, across = sim[same & off].mean().item(), sim[~same].mean().item()
    assert within > 0.7 and across < 0.2 and within - across > 0.5, (within, across)
    # deterministic, and independent of how the cameras are batched
    again = oracle.encode_cameras(inputs[:1])
    assert torch.equal(again[0], feats[0])


def test_noise_and_instances_are_what_the_config_says(tiny_ds):
    """noise=0 and instance_scale=0: a pure patch is exactly its class direction; instances then perturb it."""
    from bevlabels.features import build_extractor

    frame = tiny_ds.keyframes(tiny_ds.scenes()[-1])[2]
    clean = build_extractor(backend="synthetic_oracle", image_height=56, noise=0.0, instance_scale=0.0)
    lab = clean.load_inputs(frame)[0]
    f = clean.encode_cameras([lab])[0]  # (C, h, w)
    sky = torch.zeros_like(lab)
    sky[1] = -1  # every pixel sky, no instance
    f_sky = clean(sky[None])[0]
    assert torch.allclose(f_sky, clean.class_dirs[0][:, None, None].expand_as(f_sky), atol=1e-6)
    with_inst = build_extractor(backend="synthetic_oracle", image_height=56, noise=0.0, instance_scale=0.5)
    diff = (with_inst.encode_cameras([lab])[0] - f).norm(dim=0)
    has_agent = (lab[1] >= 0).any()
    assert has_agent and diff.max() > 0.1 and diff.min() == 0.0  # patches with an agent move, the others do not


def test_label_stage_records_an_oracle_and_pools_it_where_the_objects_are(
    synth_tiny, compose_labels, tmp_path, tiny_ds
):
    from bevlabels.cache import LabelStoreReader
    from bevlabels.features import build_extractor
    from bevlabels.grid import GridSpec
    from pipelines.labels import run

    out = tmp_path / "oracle.zarr"
    summary = run(compose_labels([
        "dataset=synthetic", f"dataset.root={synth_tiny}", f"out={out}", "grid=near", "cluster.processes=false",
        "cluster.n_workers=1", *TINY_ORACLE,
    ]))  # fmt: skip
    assert not summary["failures"]
    reader = LabelStoreReader(out)
    fm = reader.attrs["feature_model"]
    assert fm["name"] == "synthetic_oracle" and fm["weights"].startswith("oracle:") and fm["channels"] == 384
    assert "dinov2" not in str(fm).lower()
    car_dir = build_extractor(backend="synthetic_oracle", image_height=56).class_dirs[3 + 0]  # ORACLE_CLASSES: car
    grid = GridSpec.from_dict(reader.attrs["grid"])
    in_car, elsewhere = [], []
    for s, token in enumerate(reader.sample_tokens):
        frame = tiny_ds.frame(str(token))
        feat = torch.from_numpy(np.asarray(reader.dino_feat(s))).float()  # (C, H, W)
        count = np.asarray(reader.dino_count(s))
        cos = torch.nn.functional.cosine_similarity(feat, car_dir[:, None, None], dim=0).numpy()
        cars = frame.boxes.select(np.array([c == "car" for c in frame.boxes.detection_class]))
        centres = grid.cell_centres().reshape(-1, 2)
        footprints = cars.boxes[:, :7].copy()
        footprints[:, g.Z], footprints[:, g.H] = 0.0, 100.0  # a BEV test: any height
        inside = g.points_box_index(np.c_[centres, np.zeros(len(centres))], footprints)
        inside = (inside >= 0).reshape(grid.shape) & (count > 0)
        in_car.append(cos[inside])
        elsewhere.append(cos[~inside & (count > 0)])
    in_car, elsewhere = np.concatenate(in_car), np.concatenate(elsewhere)
    assert len(in_car) > 20
    assert in_car.mean() > 0.5 and elsewhere.mean() < 0.2, (in_car.mean(), elsewhere.mean())


@pytest.fixture(scope="module")
def tiny_704(tmp_path_factory) -> Path:
    """The `tiny` world (seed 0) with the `small` world's cameras (704x256): issue 32's figures are measured at that
    resolution (at the tiny preset's 352x128 an object spans half as many 14 px patches, and their blur, not
    visibility, sets the own-class share: 61% under either visibility)."""
    from bevlabels.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth704") / "tiny704"
    generate(SynthConfig.from_preset("tiny", seed=0, image_width=704, image_height=256), out, log=lambda msg: None)
    return out


@pytest.fixture(scope="module")
def tiny_oracle_stores(tiny_704, compose_labels, tmp_path_factory):
    """The 704x256 tiny world's oracle store at the label stage's default visibility and under the old 4 px z-buffer."""
    from pipelines.labels import run

    out = tmp_path_factory.mktemp("leak")
    stores = {}
    for name, vis in {
        "default": [],
        "zbuffer4": ["visibility.zbuffer_px=4", "visibility.box_occluders=false", "visibility.box_floor=0"],
    }.items():
        stores[name] = out / f"{name}.zarr"
        summary = run(compose_labels([
            "dataset=synthetic", f"dataset.root={tiny_704}", f"out={stores[name]}", "cluster.processes=false",
            "cluster.n_workers=1", "features=synthetic_oracle", *vis,
        ]))  # fmt: skip
        assert not summary["failures"]
    return stores


def test_the_default_visibility_meets_the_leak_targets_on_the_tiny_world(tiny_oracle_stores):
    """Issue 32's targets (leak < 5%, own class > 80%) on every keyframe pooled, where the old z-buffer missed them."""
    from bevlabels.leak import measure_store

    new = measure_store(tiny_oracle_stores["default"]).overall  # boxes from the dataset the store records
    old = measure_store(tiny_oracle_stores["zbuffer4"]).overall
    assert new["keyframes"] == old["keyframes"] == 8
    assert new["leak"] < 0.05 and new["own_class"] > 0.80, new
    assert old["leak"] > 0.10 and old["own_class"] < new["own_class"], old  # the regression this guards against
    assert new["coverage"] >= 0.70 * old["coverage"], (new["coverage"], old["coverage"])
    assert new["boxes_covered"] > 0.6
