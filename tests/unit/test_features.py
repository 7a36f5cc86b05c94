"""Frozen image encoders: resize policy, shapes, provenance, weight resolution offline, other
backbone families, the pixel -> feature-grid sampling, and the per-process cache.

Every model here is a tiny random config; no test reads the machine's Hugging Face cache (an
autouse fixture points HF_HOME / HF_HUB_CACHE at an empty directory).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from bevlabels.features import (
    BUILTIN_CONFIGS,
    HFBackbone,
    WeightsNotFoundError,
    builtin_config,
    clear_extractor_cache,
    get_extractor,
    pixel_to_feature,
    sample_features,
)

TINY_DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2)
TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path, monkeypatch):
    """Point every Hugging Face cache variable at an empty directory."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return home / "hub"


@pytest.fixture(scope="module")
def tiny():
    """A tiny random DINOv2 (C=32, p=14) with image_height=224."""
    return HFBackbone(weights="random", image_height=224, config_overrides=TINY_DINO, device="cpu")


def camera_batch(n: int = 6, h: int = 256, w: int = 704, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


# --- resize policy and shapes ---------------------------------------------------------------------


def test_input_size_rounding(tiny):
    assert tiny.input_size(704, 256) == (616, 224)  # 224 = 16*14; 704*224/256 = 616 = 44*14
    assert tiny.feature_size(704, 256) == (44, 16)
    assert tiny.input_size(1600, 900) == (392, 224)  # 1600*224/900 = 398.2 -> 28.4 patches -> 28
    tiny_native = HFBackbone(weights="random", config_overrides=TINY_DINO, device="cpu")
    # 256 -> 18.3 patches -> 252; 704*252/256 = 693 = 49.5 patches -> rounds half up to 50
    assert tiny_native.input_size(704, 256) == (700, 252)
    assert tiny_native.input_size(14, 14) == (14, 14)
    assert tiny_native.input_size(3, 3) == (14, 14)  # never below one patch


def test_six_cameras_shape_dtype_and_no_grad(tiny):
    feats = tiny(camera_batch())
    assert feats.shape == (6, 32, 16, 44)
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert torch.isfinite(feats).all()
    assert feats.is_inference() and not feats.requires_grad
    assert not any(p.requires_grad for p in tiny.parameters())
    tiny.train()  # frozen: stays in eval mode
    assert not tiny.training and not tiny.model.training


def test_encode_cameras_of_mixed_sizes_batches_per_size(tiny, monkeypatch):
    """AV2: a portrait camera among landscape ones; each map equals encoding that image alone."""
    land = camera_batch(n=3, h=156, w=206, seed=1)
    portrait = camera_batch(n=1, h=206, w=156, seed=2)
    images = [land[0], portrait[0], land[1], land[2]]
    calls = []
    forward = type(tiny).forward
    monkeypatch.setattr(type(tiny), "forward", lambda self, x: calls.append(tuple(x.shape)) or forward(self, x))
    feats = tiny.encode_cameras(images)
    assert sorted(calls) == [(1, 3, 206, 156), (3, 3, 156, 206)]  # one batch per image size
    monkeypatch.undo()
    assert [tuple(f.shape) for f in feats] == [(32, 16, 21), (32, 16, 12), (32, 16, 21), (32, 16, 21)]
    for im, f in zip(images, feats):
        torch.testing.assert_close(f, tiny(im[None])[0], rtol=1e-4, atol=1e-4)


def test_deterministic_and_input_kinds(tiny):
    images = camera_batch(n=2)
    a, b = tiny(images), tiny(images)
    assert torch.equal(a, b)
    # uint8 in [0, 255] and float in [0, 1] are the same image
    torch.testing.assert_close(tiny(images.float() / 255.0), a)
    with pytest.raises(TypeError):
        tiny(images.to(torch.int32))
    with pytest.raises(AssertionError):
        tiny(images[:, :1])


def test_random_init_is_seeded():
    images = camera_batch(n=1, h=56, w=84)
    a = HFBackbone(weights="random", config_overrides=TINY_DINO, device="cpu")
    b = HFBackbone(weights="random", config_overrides=TINY_DINO, device="cpu")
    c = HFBackbone(weights="random", config_overrides=TINY_DINO, device="cpu", seed=1)
    assert torch.equal(a(images), b(images))
    assert not torch.allclose(a(images), c(images))
    assert a.describe()["seed"] == 0


def test_patch_tokens_land_in_their_grid_cell():
    """With no transformer layers a token depends only on its own patch: the reshape is row-major."""
    fx = HFBackbone(weights="random", config_overrides={**TINY_DINO, "num_hidden_layers": 0}, device="cpu")
    base = torch.zeros(1, 3, 3 * 14, 5 * 14)  # already a multiple of 14: no resize
    bumped = base.clone()
    bumped[..., 1 * 14 : 2 * 14, 3 * 14 : 4 * 14] = 1.0  # patch (row 1, col 3)
    changed = (fx(bumped) - fx(base)).abs().amax(dim=1)[0]  # (h, w)
    expected = torch.zeros(3, 5, dtype=torch.bool)
    expected[1, 3] = True
    assert torch.equal(changed > 1e-6, expected)


# --- provenance and weight resolution -------------------------------------------------------------


def test_describe_is_json_and_records_provenance(tiny):
    d = tiny.describe()
    json.dumps(d)
    assert d["name"] == "facebook/dinov2-small"
    assert d["weights"] == tiny.provenance == "random-init"
    assert (d["out_channels"], d["patch_size"], d["image_height"], d["dtype"]) == (32, 14, 224, "float32")
    assert d["model_type"] == "dinov2" and d["prefix_tokens"] == 1


def test_pretrained_without_weights_says_how_to_provide_them():
    with pytest.raises(WeightsNotFoundError) as err:
        HFBackbone(weights="pretrained", config_overrides=TINY_DINO, device="cpu")
    msg = str(err.value)
    assert "huggingface" in msg and "local_path" in msg and "facebook/dinov2-small" in msg
    assert "models--facebook--dinov2-small" in msg


def test_auto_without_weights_falls_back_loudly(caplog, capsys):
    with caplog.at_level(logging.WARNING, logger="bevlabels.features.hf"):
        fx = HFBackbone(weights="auto", config_overrides=TINY_DINO, device="cpu")
    assert fx.provenance == "random-init"
    assert any(r.levelno == logging.WARNING and "RANDOMLY INITIALISED" in r.getMessage() for r in caplog.records)
    assert "RANDOMLY INITIALISED" in capsys.readouterr().err


def test_random_on_purpose_is_quiet(caplog):
    with caplog.at_level(logging.WARNING):
        fx = HFBackbone(weights="random", config_overrides=TINY_DINO, device="cpu")
    assert fx.provenance == "random-init"
    assert not [r for r in caplog.records if "RANDOMLY" in r.getMessage()]


def test_local_path_roundtrip(tiny, tmp_path):
    directory = tmp_path / "tiny-dinov2"
    tiny.model.save_pretrained(directory)
    loaded = HFBackbone(weights="pretrained", local_path=directory, image_height=224, device="cpu")
    assert loaded.provenance == f"pretrained:{directory.resolve()}"
    assert loaded.out_channels == 32
    images = camera_batch(n=2)
    torch.testing.assert_close(loaded(images), tiny(images), rtol=0, atol=0)
    # a model argument that is a directory works the same way
    by_model = HFBackbone(model=str(directory), weights="auto", image_height=224, device="cpu")
    assert by_model.provenance == loaded.provenance


def test_named_local_path_that_is_missing_fails_even_in_auto(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="local_path"):
        HFBackbone(weights="auto", local_path=tmp_path / "nope", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="huggingface"):
        HFBackbone(weights="auto", local_path=tmp_path / "empty", device="cpu")


def test_loads_from_the_hugging_face_cache(tiny, empty_hf_cache):
    """A hub-cache layout (refs/main -> snapshots/<sha>) under HF_HUB_CACHE loads offline."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hf_cache / "models--facebook--dinov2-small"
    snapshot = repo / "snapshots" / sha
    tiny.model.save_pretrained(snapshot)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (snapshot / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)

    fx = HFBackbone(weights="pretrained", image_height=224, device="cpu")
    assert fx.provenance == "pretrained:facebook/dinov2-small"
    d = fx.describe()
    assert d["revision"] == sha and d["seed"] is None
    assert d["image_mean"] == mean and d["image_std"] == std
    assert HFBackbone(weights="auto", device="cpu").provenance == "pretrained:facebook/dinov2-small"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        HFBackbone(weights="maybe")
    with pytest.raises(ValueError, match="local_path"):
        HFBackbone(weights="random", local_path=tmp_path)
    with pytest.raises(WeightsNotFoundError, match="built-in"):
        HFBackbone(model="someone/unknown-vit", weights="auto", device="cpu")


def test_builtin_configs_match_the_checkpoints():
    small = builtin_config("facebook/dinov2-small")
    assert (small.hidden_size, small.num_hidden_layers, small.num_attention_heads) == (384, 12, 6)
    assert (small.patch_size, small.image_size, small.model_type) == (14, 518, "dinov2")
    sizes = {k: builtin_config(k).hidden_size for k in BUILTIN_CONFIGS if "dinov2" in k}
    assert sizes["facebook/dinov2-base"] == 768
    assert sizes["facebook/dinov2-large"] == 1024
    assert sizes["facebook/dinov2-giant"] == 1536
    assert builtin_config("facebook/dinov2-with-registers-small").num_register_tokens == 4


# --- other backbone families ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "overrides", "prefix", "patch"),
    [
        ("google/vit-base-patch16-224", {**TINY_VIT, "image_size": 64}, 1, 16),
        ("facebook/dinov2-with-registers-small", TINY_DINO, 5, 14),
        ("google/siglip-base-patch16-224", {**TINY_VIT, "image_size": 64}, 0, 16),
        ("openai/clip-vit-base-patch16", {**TINY_VIT, "image_size": 64}, 1, 16),
    ],
)
def test_other_backbones_same_interface(model, overrides, prefix, patch):
    fx = HFBackbone(model=model, weights="random", image_height=48, config_overrides=overrides, device="cpu")
    assert (fx.num_prefix_tokens, fx.patch_size, fx.provenance) == (prefix, patch, "random-init")
    images = camera_batch(n=2, h=90, w=160)
    w_in, h_in = fx.input_size(160, 90)
    feats = fx(images)
    assert feats.shape == (2, 32, h_in // patch, w_in // patch)
    # the features are exactly the backbone's patch tokens, prefix tokens dropped, row-major
    with torch.inference_mode():
        x = fx.preprocess(images)
        tokens = fx.model(pixel_values=x, **fx._forward_kwargs).last_hidden_state
    assert tokens.shape[1] == prefix + feats.shape[2] * feats.shape[3]
    torch.testing.assert_close(feats.flatten(2).transpose(1, 2), tokens[:, prefix:])


def test_vit_from_local_path(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(**TINY_VIT, patch_size=16, image_size=64)).eval()
    vit.save_pretrained(tmp_path / "vit")
    fx = HFBackbone(model="my/vit", weights="pretrained", local_path=tmp_path / "vit", device="cpu")
    assert fx.describe()["architecture"] == "ViTModel" and fx.image_height is None
    feats = fx(torch.rand(1, 3, 64, 96))
    assert feats.shape == (1, 32, 4, 6)


# --- pixel -> feature grid -----------------------------------------------------------------------


def test_sample_features_hand_computation():
    C, h, w, W, H = 3, 4, 5, 100, 40  # a cell is 20 px wide and 10 px tall
    feats = torch.randn(C, h, w, dtype=torch.float64)

    def centre(r: int, c: int) -> torch.Tensor:
        return torch.tensor([(c + 0.5) * W / w, (r + 0.5) * H / h], dtype=torch.float64)

    uv = torch.stack([centre(0, 0), centre(2, 3), centre(3, 4)])
    torch.testing.assert_close(sample_features(feats, uv, (W, H)), feats[:, [0, 2, 3], [0, 3, 4]].T)

    # halfway between horizontal and vertical neighbours
    uv = torch.tensor([[(3 + 1) * 20.0, 2.5 * 10.0], [3.5 * 20.0, (1 + 1) * 10.0]], dtype=torch.float64)
    expected = torch.stack([(feats[:, 2, 3] + feats[:, 2, 4]) / 2, (feats[:, 1, 3] + feats[:, 2, 3]) / 2])
    torch.testing.assert_close(sample_features(feats, uv, (W, H)), expected)

    # a generic point: u=37 -> x=1.85 (0.35 past centre of col 1), v=13 -> y=1.3 (0.8 past row 0)
    tx, ty = 0.35, 0.8
    top = (1 - tx) * feats[:, 0, 1] + tx * feats[:, 0, 2]
    bottom = (1 - tx) * feats[:, 1, 1] + tx * feats[:, 1, 2]
    uv = torch.tensor([[37.0, 13.0]], dtype=torch.float64)
    torch.testing.assert_close(sample_features(feats, uv, (W, H))[0], (1 - ty) * top + ty * bottom)
    torch.testing.assert_close(pixel_to_feature(uv, (W, H), (w, h)), torch.tensor([[1.85, 1.3]], dtype=torch.float64))

    # within half a cell of the border: the border cell's value
    uv = torch.tensor([[0.0, 0.0], [99.9, 39.9]], dtype=torch.float64)
    torch.testing.assert_close(sample_features(feats, uv, (W, H)), feats[:, [0, 3], [0, 4]].T)

    # batched form agrees with the per-image form
    uv = torch.rand(2, 7, 2, dtype=torch.float64) * torch.tensor([W, H], dtype=torch.float64)
    batched = sample_features(torch.stack([feats, 2 * feats]), uv, (W, H))
    assert batched.shape == (2, 7, C)
    torch.testing.assert_close(batched[1], sample_features(2 * feats, uv[1], (W, H)))


def test_extractor_pixel_mapping_matches_resize(tiny):
    """The pixel centre of a patch in the original image maps to that cell's centre."""
    W, H = 704, 256
    w, h = tiny.feature_size(W, H)
    uv = torch.tensor([[(10 + 0.5) * W / w, (5 + 0.5) * H / h]])
    torch.testing.assert_close(tiny.pixel_to_feature(uv, (W, H)), torch.tensor([[10.5, 5.5]]))


# --- per-process cache -----------------------------------------------------------------------------


def test_get_extractor_caches_per_config():
    clear_extractor_cache()
    cfg = dict(weights="random", image_height=56, device="cpu", config_overrides=dict(TINY_DINO))
    a = get_extractor(**cfg)
    b = get_extractor(**dict(reversed(list(cfg.items()))))
    assert a is b
    c = get_extractor(**{**cfg, "image_height": 112})
    assert c is not a
    clear_extractor_cache()
    assert get_extractor(**cfg) is not a
    clear_extractor_cache()


# --- beyond `make test` -----------------------------------------------------------------------------


@pytest.mark.slow
def test_default_vit_s14_random_fallback_shape():
    fx = HFBackbone(weights="random", image_height=224, device="cpu")
    assert (fx.out_channels, fx.patch_size) == (384, 14)
    assert fx(camera_batch()).shape == (6, 384, 16, 44)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_cuda():
    ref = HFBackbone(weights="random", image_height=224, config_overrides=TINY_DINO, device="cuda")
    bf16 = HFBackbone(weights="random", image_height=224, config_overrides=TINY_DINO, device="cuda", dtype="bf16")
    assert bf16.describe()["dtype"] == "bfloat16"
    images = camera_batch()
    a, b = ref(images), bf16(images)
    assert b.dtype == torch.float32 and b.device.type == "cuda"
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert cos.mean() > 0.99
