"""Hugging Face vision transformers (DINOv2 by default) as frozen :class:`FeatureExtractor` s.

Letters as in :mod:`bevlabels.features.base`: N images, C channels, ``H_in, W_in`` the resized
input, p the patch size, ``h, w`` the patch grid, L the token sequence length.

Any ``transformers`` backbone whose ``forward(pixel_values)`` returns a ``last_hidden_state``
``(N, L, C)`` made of prefix tokens (CLS, registers) followed by the ``h * w`` patch tokens in
row-major order works: DINOv2 (1 CLS), DINOv2 with registers (1 CLS + ``num_register_tokens``),
ViT (1 CLS), CLIP vision (1 CLS), SigLIP vision (no CLS). Composite checkpoints (a ``CLIPModel``
with a ``vision_config``) load their vision tower. Features are the backbone's
``last_hidden_state`` as is (DINOv2 and SigLIP apply their final layer norm there; CLIP does not).

Where the weights come from (no internet at run time, so never the Hub):

1. an explicit ``local_path``: a directory with ``config.json`` and the weights
   (``save_pretrained``); provenance ``pretrained:<absolute path>``;
2. a ``model`` that is itself an existing directory: the same;
3. the Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``, read when the model is built): provenance ``pretrained:<id>``.

With ``weights="pretrained"`` a miss raises :class:`WeightsNotFoundError` saying how to provide
them. With ``weights="auto"`` (the default) a miss in 2-3 warns loudly on the logger and stderr
and builds the architecture from a built-in config with random weights (provenance
``random-init``); a named ``local_path`` that does not load is an error even then, since the
config asked for those weights explicitly. ``weights="random"`` builds random weights on purpose.
Random initialisation is seeded (``seed``, default 0) so every worker of a run builds the same
network.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from .base import IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor, resolve_device

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/dinov2-small"
WEIGHTS_MODES = ("auto", "pretrained", "random")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

# model_type -> (mean, std) when a checkpoint ships no preprocessor_config.json.
_FAMILY_NORM = {
    "clip_vision_model": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "siglip_vision_model": (HALF, HALF),
    "vit": (HALF, HALF),
}

# model_types whose sequence has no CLS token in front of the patch tokens.
_NO_CLS_MODEL_TYPES = {"siglip_vision_model"}


def _dinov2(hidden: int, layers: int, heads: int, registers: int | None = None, **kw: Any) -> dict:
    cfg = dict(
        model_type="dinov2" if registers is None else "dinov2_with_registers",
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        **kw,
    )
    if registers is not None:
        cfg["num_register_tokens"] = registers
    return cfg


def _vit_b16(model_type: str, **kw: Any) -> dict:
    """ViT-B/16 at 224 px (768 channels, 12 layers of 12 heads, MLP 3072), the shape ViT, CLIP and SigLIP share."""
    return dict(
        model_type=model_type,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        patch_size=16,
        image_size=224,
        **kw,
    )


# Architectures that can be built without any file, for the random-init fallback. The values
# mirror the checkpoints' config.json (the weights are what is missing, not the architecture).
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "facebook/dinov2-small": _dinov2(384, 12, 6),
    "facebook/dinov2-base": _dinov2(768, 12, 12),
    "facebook/dinov2-large": _dinov2(1024, 24, 16),
    "facebook/dinov2-giant": _dinov2(1536, 40, 24, use_swiglu_ffn=True),
    "facebook/dinov2-with-registers-small": _dinov2(384, 12, 6, registers=4),
    "facebook/dinov2-with-registers-base": _dinov2(768, 12, 12, registers=4),
    "facebook/dinov2-with-registers-large": _dinov2(1024, 24, 16, registers=4),
    "facebook/dinov2-with-registers-giant": _dinov2(1536, 40, 24, registers=4, use_swiglu_ffn=True),
    "google/vit-base-patch16-224": _vit_b16("vit"),
    "openai/clip-vit-base-patch16": _vit_b16("clip_vision_model", projection_dim=512),
    "google/siglip-base-patch16-224": _vit_b16("siglip_vision_model"),
}


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for (or named explicitly) and are not on this machine."""


def hf_cache_dir() -> Path:
    """Return the Hugging Face hub cache directory, from the environment as it is *now*.

    ``HF_HUB_CACHE`` (or the legacy ``HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub`` — the order
    ``huggingface_hub`` uses, but read at call time (its constants freeze at import).
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def how_to_provide_weights(model: str, cache_dir: Path | str | None = None) -> str:
    """Return instructions (several lines) for getting ``model``'s weights onto an offline machine."""
    cache = Path(cache_dir) if cache_dir is not None else hf_cache_dir()
    repo_dir = "models--" + model.replace("/", "--")
    return (
        f"This machine has no internet access, so the weights of '{model}' must be provided locally:\n"
        f"  (a) on a machine with internet run\n"
        f"        hf download {model}        (older huggingface_hub: huggingface-cli download {model})\n"
        f"      or\n"
        f"        python -c \"from transformers import AutoModel; AutoModel.from_pretrained('{model}')\"\n"
        f"      then copy ~/.cache/huggingface/hub/{repo_dir} into this machine's Hugging Face cache\n"
        f"      ({cache}/{repo_dir}; set HF_HOME or HF_HUB_CACHE to point elsewhere); or\n"
        f"  (b) save it with AutoModel.from_pretrained('{model}').save_pretrained('/some/dir'), copy\n"
        f"      that directory here and pass local_path='/some/dir'\n"
        f"      (features.local_path=/some/dir on the command line).\n"
        f"  Or run with weights='random' to use randomly initialised weights on purpose (recorded in\n"
        f"  the store's attrs as feature_model weights 'random-init')."
    )


def builtin_config(model: str, overrides: dict[str, Any] | None = None):
    """Return the ``transformers`` config of ``model`` from :data:`BUILTIN_CONFIGS` (+ ``overrides``).

    Raises ``KeyError`` for an id with no built-in architecture.
    """
    from transformers import AutoConfig

    spec = dict(BUILTIN_CONFIGS[model.lower()])
    model_type = spec.pop("model_type")
    return AutoConfig.for_model(model_type, **{**spec, **(overrides or {})})


def _apply_overrides(config, overrides: dict[str, Any] | None):
    """Return ``config`` rebuilt with ``overrides`` (validated like a fresh config)."""
    if not overrides:
        return config
    return type(config).from_dict({**config.to_dict(), **overrides})


def _vision_config(config):
    """Return the vision tower's config of a composite config (CLIP, SigLIP), else ``config``."""
    if getattr(config, "patch_size", None) is None and getattr(config, "vision_config", None) is not None:
        return config.vision_config
    return config


def _patch_size(config) -> int:
    p = getattr(config, "patch_size", None)
    if p is None:
        raise ValueError(f"{type(config).__name__} has no patch_size: not a ViT-style backbone")
    if isinstance(p, (list, tuple)):
        if len(set(p)) != 1:
            raise ValueError(f"only square patches are supported, got patch_size={p}")
        p = p[0]
    return int(p)


def num_prefix_tokens(config) -> int:
    """Return how many tokens precede the patch tokens in ``last_hidden_state`` (CLS + registers)."""
    cls = 0 if config.model_type in _NO_CLS_MODEL_TYPES else 1
    return cls + int(getattr(config, "num_register_tokens", 0) or 0)


def _read_norm(preprocessor_json: str | Path | None) -> tuple[tuple, tuple] | None:
    """Return ``(image_mean, image_std)`` from a preprocessor_config.json, or None."""
    if not isinstance(preprocessor_json, (str, Path)) or not Path(preprocessor_json).is_file():
        return None
    cfg = json.loads(Path(preprocessor_json).read_text())
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if mean is None or std is None:
        return None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class HFBackbone(FeatureExtractor):
    """A frozen Hugging Face ViT-style backbone (default DINOv2 ViT-S/14) returning patch features.

    Args:
        model: Hugging Face id (``facebook/dinov2-small``) or a local directory. With
            ``local_path`` it names what the directory holds (used in messages and attrs).
        weights: ``"auto"`` (pretrained when found, else loud random-init fallback),
            ``"pretrained"`` (error when not found) or ``"random"`` (random init on purpose).
        local_path: a ``save_pretrained`` directory to load the weights from.
        image_height: input height before rounding to a multiple of the patch size
            (None: each image's own height); the width keeps the aspect ratio.
        device: ``"auto"`` (cuda when available, else cpu), ``"cpu"``, ``"cuda:1"``...
        dtype: None/``"float32"``, or ``"bfloat16"``/``"float16"`` for autocast on CUDA (on CPU
            the encoder always computes in float32). Features are returned as float32.
        config_overrides: config fields replaced before building (e.g. a tiny model in tests).
        cache_dir: Hugging Face hub cache to search (default: :func:`hf_cache_dir`).
        seed: seed of the random initialisation (so all workers build the same random network).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        weights: str = "auto",
        local_path: str | os.PathLike | None = None,
        image_height: int | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        config_overrides: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        seed: int = 0,
    ):
        if weights not in WEIGHTS_MODES:
            raise ValueError(f"weights must be one of {WEIGHTS_MODES}, got {weights!r}")
        if weights == "random" and local_path is not None:
            raise ValueError("weights='random' with a local_path: drop one (local_path loads pretrained weights)")
        cache = Path(cache_dir).expanduser() if cache_dir is not None else hf_cache_dir()
        overrides = dict(config_overrides or {})

        net, provenance, norm, revision = None, "random-init", None, None
        if weights != "random":
            net, provenance, norm, revision = self._load_pretrained(model, local_path, cache, overrides, weights)
        if net is None:
            net = self._build_random(model, overrides, seed)
        config = net.config
        mean, std = norm or _FAMILY_NORM.get(config.model_type, (IMAGENET_MEAN, IMAGENET_STD))

        super().__init__(
            name=model,
            provenance=provenance,
            out_channels=config.hidden_size,
            patch_size=_patch_size(config),
            image_height=image_height,
            image_mean=mean,
            image_std=std,
            device=device,
            dtype=dtype,
        )
        self.model = net.eval().requires_grad_(False)
        self.num_prefix_tokens = num_prefix_tokens(config)
        self.model_type = config.model_type
        self.revision = revision
        self.seed = seed if provenance == "random-init" else None
        params = inspect.signature(net.forward).parameters
        self._forward_kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        self.to(resolve_device(device))

    # -- construction -------------------------------------------------------------------------

    @staticmethod
    def _load_pretrained(model: str, local_path, cache: Path, overrides: dict, weights: str):
        """Return ``(net, provenance, norm, revision)``, or ``(None, ...)`` for the auto fallback."""
        src = None
        if local_path is not None:
            src = Path(local_path).expanduser().resolve()
            if not src.is_dir():
                raise WeightsNotFoundError(
                    f"local_path={str(local_path)!r} for feature model '{model}' is not a directory.\n"
                    + how_to_provide_weights(model, cache)
                )
        elif Path(model).expanduser().is_dir():
            src = Path(model).expanduser().resolve()
        if src is not None:  # a directory named explicitly: load it or fail, in every mode
            if not (src / "config.json").is_file():
                raise WeightsNotFoundError(
                    f"no config.json in {src} (local_path / model directory of feature model '{model}'); "
                    "expected a save_pretrained directory.\n" + how_to_provide_weights(model, cache)
                )
            net = HFBackbone._from_pretrained(src, cache, overrides, model, explicit=True)
            return net, f"pretrained:{src}", _read_norm(src / "preprocessor_config.json"), None

        net = HFBackbone._from_pretrained(model, cache, overrides, model, explicit=weights == "pretrained")
        if net is not None:
            from huggingface_hub import try_to_load_from_cache

            cfg_file = try_to_load_from_cache(model, "config.json", cache_dir=cache)
            revision = Path(cfg_file).parent.name if isinstance(cfg_file, str) else None
            pre = try_to_load_from_cache(model, "preprocessor_config.json", cache_dir=cache)
            return net, f"pretrained:{model}", _read_norm(pre), revision

        banner = "=" * 96
        message = (
            f"\n{banner}\nWARNING: no pretrained weights found for feature model '{model}'\n"
            f"(looked in the Hugging Face cache at {cache}).\n"
            f"Falling back to a RANDOMLY INITIALISED network: its features carry no foundation-model\n"
            f"knowledge. The store records feature_model weights='random-init'.\n"
            + how_to_provide_weights(model, cache)
            + "\nSet weights='pretrained' to make this an error, or weights='random' to silence it."
            + f"\n{banner}"
        )
        logger.warning(message)
        print(message, file=sys.stderr, flush=True)
        return None, "random-init", None, None

    @staticmethod
    def _from_pretrained(src: str | Path, cache: Path, overrides: dict, model: str, explicit: bool):
        """Return the model loaded offline from directory ``src`` (a Path) or hub id ``src`` (a str)
        in ``cache``; None when absent, or raise :class:`WeightsNotFoundError` when ``explicit``."""
        from transformers import AutoConfig, AutoModel

        cache_dir = None if isinstance(src, Path) else cache
        try:
            config = AutoConfig.from_pretrained(src, cache_dir=cache_dir, local_files_only=True)
            config = _apply_overrides(_vision_config(config), overrides)
            return AutoModel.from_pretrained(
                src, config=config, cache_dir=cache_dir, local_files_only=True, dtype=torch.float32
            )
        except OSError as err:
            if not explicit:
                return None
            where = f"directory {src}" if isinstance(src, Path) else f"the Hugging Face cache at {cache}"
            raise WeightsNotFoundError(
                f"no pretrained weights for feature model '{model}' in {where}: {err}\n"
                + how_to_provide_weights(model, cache)
            ) from err

    @staticmethod
    def _build_random(model: str, overrides: dict, seed: int):
        """Return ``model``'s architecture with random weights, initialised from ``seed``."""
        from transformers import AutoModel

        try:
            config = builtin_config(model, overrides)
        except KeyError:
            raise WeightsNotFoundError(
                f"feature model '{model}' has no weights on this machine and no built-in architecture to "
                f"initialise randomly (built-in: {', '.join(BUILTIN_CONFIGS)}).\n" + how_to_provide_weights(model)
            ) from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AutoModel.from_config(config)

    # -- encoding -----------------------------------------------------------------------------

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return patch features ``(N, C, h, w)`` of normalised inputs ``(N, 3, H_in, W_in)``."""
        N, _, H_in, W_in = pixel_values.shape
        h, w = H_in // self.patch_size, W_in // self.patch_size
        tokens = self.model(pixel_values=pixel_values, **self._forward_kwargs).last_hidden_state  # (N, L, C)
        L, C = tokens.shape[1:]
        if L != self.num_prefix_tokens + h * w:
            raise RuntimeError(
                f"{type(self.model).__name__} returned {L} tokens for a {h}x{w} patch grid; expected "
                f"{self.num_prefix_tokens} prefix tokens + {h * w} patch tokens (unsupported backbone?)"
            )
        patches = tokens[:, self.num_prefix_tokens :]  # (N, h*w, C)
        return patches.transpose(1, 2).reshape(N, C, h, w)  # (N, C, h, w)

    def describe(self) -> dict[str, Any]:
        """Return the base description plus ``model_type``, ``architecture``, ``prefix_tokens``,
        ``revision`` (the cache snapshot, when loaded from the cache) and ``seed`` (random-init)."""
        return {
            **super().describe(),
            "model_type": self.model_type,
            "architecture": type(self.model).__name__,
            "prefix_tokens": self.num_prefix_tokens,
            "revision": self.revision,
            "seed": self.seed,
        }
