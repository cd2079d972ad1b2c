"""Vision towers and vision-language models: which stack a part reads, found from the model.

A vision-language model (LLaVA, Qwen2-VL, Idefics3, PaliGemma, Gemma-3, Chameleon ...) is
recognised by its forward taking ``pixel_values`` while its main input is ``input_ids``; a vision
encoder (CLIP/SigLIP vision models, ViT) by its main input being ``pixel_values``
(``model.main_input_name``, transformers' own marker).

A dual encoder (CLIP, SigLIP: text and image encoders side by side, :func:`is_dual_encoder`)
reads plain texts through its text stack and images alone through its tower (``vision.``
parts), which then runs on its own.

Parts read the *language stack* by default (its blocks are found as for any text model). A part
prefixed ``vision.`` (``vision.resid_post``, ``vision.mlp_out``, or a module path relative to the
tower such as ``vision.encoder.layers.{layer}.mlp``) reads the *vision tower*: the submodule
that is a transformers model configured by ``config.vision_config``. Layers then count the
tower's blocks. For a vision encoder the model is the tower, so plain parts read it.

A tower's blocks run over images, not over samples: each image's tokens are pooled in the tower
(``cls``/``first`` is the first token, ``image:mean`` the patches without the class token) and
land in the row of the sample that holds the image. An image the tower sees as several rows
(tiles, crops) is pooled over all its rows; where the tower flattens the patches of a batch into
one sequence (Qwen2-VL), only order-free poolings (mean, max, min) are defined.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import replace

from . import blocks as _arch
from ..extraction.token_pooling import split_modality
from ..layout import PartName

__all__ = ["PREFIX", "find_tower", "is_vision_only", "reads_images", "split_stack",
           "stack_model", "tower_targets"]

PREFIX = "vision."


def _model_class(model_or_config):
    if hasattr(model_or_config, "forward"):
        return type(model_or_config)
    try:  # a configuration: the class transformers' AutoModel registry maps it to
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
    except ImportError:  # pragma: no cover
        return None
    name = MODEL_MAPPING_NAMES.get(getattr(model_or_config, "model_type", None))
    if isinstance(name, (tuple, list)):
        name = name[0]
    return getattr(transformers, name, None) if isinstance(name, str) else None


def reads_images(model_or_config) -> str | bool:
    """``"vision"`` for a vision encoder (main input ``pixel_values``, no ``input_ids``),
    ``"vlm"`` for a model whose forward takes ``input_ids`` and ``pixel_values``, else
    ``False``. A configuration is judged by the model class transformers' ``AutoModel``
    registry gives it."""
    cls = _model_class(model_or_config)
    return False if cls is None else _reads_images(cls)


@functools.lru_cache(maxsize=None)
def _reads_images(cls) -> str | bool:
    """:func:`reads_images` of a model class (read once per class)."""
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False
    if "pixel_values" not in params:
        return False
    # BLIP-2 and Kosmos-2 name pixel_values their main input but read input_ids too
    if getattr(cls, "main_input_name", "input_ids") == "pixel_values" \
            and "input_ids" not in params:
        return "vision"
    return "vlm"


def is_vision_only(model) -> bool:
    """A vision encoder: its main input is ``pixel_values``."""
    return reads_images(model) == "vision"


def config_image_token_ids(config) -> list[int]:
    """Ids of the tokens a vision-language model replaces by image features
    (``image_token_id``/``image_token_index`` of its config or text config)."""
    ids = []
    for cfg in (config, _arch.text_config(config)):
        for name in ("image_token_id", "image_token_index"):
            v = getattr(cfg, name, None)
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return ids


def is_dual_encoder(model) -> bool:
    """A model with a text and an image encoder side by side (CLIP, SigLIP, ALIGN ...): it
    reads both but puts no image into its text's tokens (no image token), and offers
    ``get_image_features`` and ``get_text_features``."""
    return (reads_images(model) == "vlm" and not config_image_token_ids(model.config)
            and callable(getattr(model, "get_image_features", None))
            and callable(getattr(model, "get_text_features", None)))


def split_stack(parts) -> tuple[bool, list]:
    """``(reads the tower, parts without the prefix)``; mixing stacks is an error (names are
    read by :class:`~embetter_plug.layout.PartName`; what is not a string is left to the part
    checks)."""
    items = [parts] if isinstance(parts, str) else list(parts)
    names = [PartName.parse(p) if isinstance(p, str) else None for p in items]
    tower = [n is not None and n.stack == "vision" for n in names]
    if any(tower) and not all(tower):
        mixed = [p for p, t in zip(items, tower) if not t]
        raise ValueError(
            f"parts {items} mix the vision tower ('{PREFIX}...') with the language stack "
            f"({mixed}); their layers and widths differ, so use one encoder per stack and "
            "combine the outputs (e.g. a FeatureUnion)."
        )
    stripped = [str(replace(n, stack=None)) if t else p for p, n, t in zip(items, names, tower)]
    return any(tower), stripped


def find_tower(model):
    """The vision tower of a vision-language model (the model itself for a vision encoder).

    The tower is the shallowest submodule that is a transformers model configured by
    ``config.vision_config``; failing that, one whose main input is ``pixel_values``.
    """
    if is_vision_only(model):
        return model
    vcfg = getattr(model.config, "vision_config", None)
    cands = []
    for name, m in model.named_modules():
        if m is model or not hasattr(m, "config"):
            continue
        if vcfg is not None and type(m.config) is type(vcfg):
            cands.append((name.count("."), 0, name, m))
        elif getattr(m, "main_input_name", None) == "pixel_values":
            cands.append((name.count("."), 1, name, m))
    if not cands:
        mt = getattr(model.config, "model_type", type(model).__name__)
        raise ValueError(
            f"{type(model).__name__} (model_type={mt!r}) has no vision tower to read 'vision.' "
            "parts from (Chameleon, for one, turns images into discrete tokens instead); read the "
            "language stack's image tokens with token_pooling='image:mean'."
        )
    return min(cands, key=lambda c: c[:3])[3]


def stack_model(model, tower: bool):
    """The module whose blocks ``layers`` count: the tower or the model (language stack)."""
    return find_tower(model) if tower else model


def sample_forward(model, images_alone: bool):
    """``(module, extra kwargs)`` that runs processed image+text inputs: the tower alone for
    images alone, else the base model without its head where it takes ``pixel_values``, else
    the model itself."""
    if images_alone:
        forward = find_tower(model)
    else:
        base = _arch.base_model(model)
        forward = base if base is not model and "pixel_values" in inspect.signature(
            base.forward).parameters else model
    params = inspect.signature(forward.forward).parameters
    return forward, ({"use_cache": False} if "use_cache" in params else {})


def num_patches(tower) -> int | None:
    """Patch tokens per image from the tower's embeddings (``num_patches``), if it says."""
    for m in tower.modules():
        n = getattr(m, "num_patches", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def tower_targets(model, layers, parts):
    """Hook targets reading the tower: the plain targets of ``parts`` in the tower, each
    pooling its images' tokens itself and placing them in their samples' rows."""
    from . import heads as _attn_arch
    from ..extraction.hooks import Target

    tower = find_tower(model)
    heads = [p for p in parts if _attn_arch.is_attn_part(p)]
    if heads:
        raise ValueError(f"parts {heads}: per-head attention parts are read from the language "
                         f"stack; in the vision tower use {list(_arch.PARTS)} or module paths.")
    fn = _TowerPool(num_patches(tower))
    return [Target(*t)._replace(fn=fn) for t in _arch.resolve_targets(tower, layers, parts)]


class _TowerPool:
    """Pool a tower module's output into ``(batch, poolings, hidden)``: each image's vector goes
    to its sample's row, rows without an image are NaN.

    The tower sees each image as one row of tokens (CLIP, SigLIP, ViT), as several rows (tiles
    or crops: LLaVA-NeXT, Idefics3) or as patches flattened into one sequence for the whole
    batch (Qwen2-VL); ``pool.image_units`` says how many rows (or patches) belong to each image,
    in order. An image's tokens are all its rows' tokens in the order the tower sees them: its
    first token is ``cls``/``first``, its patch tokens (class tokens of each row left out) are
    what ``image:*`` poolings read.
    """

    def __init__(self, n_patches: int | None):
        self.n_patches = n_patches

    def __call__(self, received, pool):
        import torch

        rows = getattr(pool, "image_rows", None)
        units = getattr(pool, "image_units", None)
        x = received
        flat = x.dim() == 2  # patches of the whole batch in one sequence
        if flat:
            x = x[:, None, :]
        if rows is not None and units is None:
            units = torch.ones(len(rows), dtype=torch.long, device=x.device)
        if x.dim() != 3 or rows is None or x.shape[0] != int(units.sum()):
            n = "?" if rows is None else len(rows)
            raise ValueError(
                f"the vision tower's module gives an output of shape {tuple(received.shape)} "
                f"for {n} image(s), which does not split into the images' rows or patches; "
                "read the language stack's image tokens instead: token_pooling='image:mean'."
            )
        if flat:
            positional = [p for p in pool.poolings if split_modality(p)[1]
                          not in ("mean", "max", "min")]
            if positional:
                raise ValueError(
                    f"token_pooling {positional}: this model's tower flattens (and may reorder) "
                    "the patches of all images into one sequence, so only mean, max and min "
                    "(or image:mean ...) are defined over an image's patches.")
        tower_pool, index = self._pooler(pool, units.to(x.device), x.shape[1], flat, x.device)
        n_rows, n_tok, hidden = x.shape
        if index is None:  # one row per image: the rows are the images
            tokens = x
        else:
            tokens = x.reshape(n_rows * n_tok, hidden)[index]  # (images, tokens, hidden)
        pooled = tower_pool(tokens)
        out = torch.full((pool.mask.shape[0], *pooled.shape[1:]), float("nan"),
                         dtype=pooled.dtype, device=pooled.device)
        out[rows.to(out.device)] = pooled
        return out

    def _pooler(self, pool, units, n_tok: int, flat: bool, device):
        """A pooler over each image's tokens and the gather index that lines them up, made
        once per batch."""
        import torch

        from ..extraction.token_pooling import make_pooler

        key = (tuple(units.tolist()), n_tok, flat, device)
        memo = pool.__dict__.setdefault("tower_poolers", {})
        if key not in memo:
            width = int(units.max()) * n_tok
            pos = torch.arange(width, device=device)
            starts = (units.cumsum(0) - units) * n_tok
            valid = pos[None, :] < (units * n_tok)[:, None]
            index = (starts[:, None] + pos[None, :]).clamp(max=int(units.sum()) * n_tok - 1)
            prefix = 0 if flat or not self.n_patches else max(n_tok - self.n_patches, 0)
            patches = valid & (pos[None, :] % n_tok >= prefix)  # class tokens come first
            if not flat and bool((units == 1).all()):
                index = None  # no gather needed
            memo[key] = (make_pooler(valid.long(), pool.poolings,
                                     modalities={"image": patches.long()}), index)
        return memo[key]
