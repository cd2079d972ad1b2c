"""Image+text samples into model inputs: placeholders, one processor call per sample, batches.

Each sample goes through the processor alone (``AutoProcessor`` of a vision-language model, the
image processor of a vision encoder), so its tokens never depend on the rest of the batch.
Samples are then sorted by token count and collated: token-aligned tensors (``input_ids``,
``attention_mask``, ``token_type_ids`` ...) are padded on the right, image tensors are
concatenated in sample order (padded with zeros where their crop or tile counts differ). The
model scatters image features into its placeholders in that same order, so a batch computes what
each sample computes alone.

Users pass plain text: where a sample has an image and its text no placeholder, the processor's
chat template (a user turn holding the image and the text) writes the prompt, or, without a
template, the model's image token is put before the text.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .images import load_image
from .samples import Sample

__all__ = ["check_samples", "image_token", "image_token_ids", "plan_batches"]


def image_token(processor) -> str | None:
    """The placeholder string the processor expands into image tokens (``"<image>"`` ...)."""
    tok = getattr(processor, "image_token", None)
    if isinstance(tok, str):
        return tok
    tokenizer = getattr(processor, "tokenizer", None)
    tok = getattr(tokenizer, "image_token", None)
    return tok if isinstance(tok, str) else None


def image_token_ids(model, processor) -> list[int]:
    """Ids of the tokens that a vision-language model replaces by image features, from its
    config (``image_token_id``/``image_token_index``) or else its processor."""
    from ..arch.vision import config_image_token_ids

    ids = config_image_token_ids(model.config)
    if not ids:
        v = getattr(processor, "image_token_id", None)
        if isinstance(v, int):
            ids.append(v)
    return ids


def _uses_chat_template(processor) -> bool:
    return bool(getattr(processor, "chat_template", None))


def check_samples(samples: list[Sample], processor, *, vision_only: bool,
                  prompt_template: str | None = None) -> None:
    """Check what can be checked without the model: texts given to a vision encoder, several
    images given to it, and placeholder counts that do not match the sample's images."""
    if vision_only:
        bad = [i for i, s in enumerate(samples) if s.text is not None or len(s.images) != 1]
        if bad:
            raise ValueError(
                f"this model is a vision encoder: it reads one image per sample and no text, but "
                f"samples at positions {bad[:10]} hold text, no image or several images; pass "
                "images alone, one per sample."
            )
        return
    token = image_token(processor)
    if token is None:
        many = [i for i, s in enumerate(samples) if len(s.images) > 1]
        if many:
            raise ValueError(f"samples {many[:10]} hold several images, but "
                             f"{type(processor).__name__} names no image placeholder to place "
                             "them by; pass one image per sample.")
        return
    for i, s in enumerate(samples):
        n, want = (s.text or "").count(token), len(s.images)
        if n not in (0, want) or (n and prompt_template is not None):
            raise ValueError(
                f"sample {i}: its text holds {n} image placeholder(s) {token!r} for {want} "
                "image(s); pass plain text (the encoder puts the placeholders before it) or "
                "exactly one placeholder per image"
                + (" (and no prompt_template)" if prompt_template else "") + "."
            )


def _prompt(s: Sample, processor, template: tuple[str, str]) -> str:
    text = template[0] + (s.text or "") + template[1]
    token = image_token(processor)
    if not s.images or (token and token in text):
        if _uses_chat_template(processor):
            return _chat(processor, text, images=0)
        return text
    if _uses_chat_template(processor):
        return _chat(processor, text, images=len(s.images))
    if token is None:
        raise ValueError(f"{type(processor).__name__} names no image token to insert; put the "
                         "model's image placeholder in the text yourself.")
    return token * len(s.images) + text


def _chat(processor, text: str, images: int) -> str:
    content = [{"type": "image"}] * images + ([{"type": "text", "text": text}] if text else [])
    return processor.apply_chat_template([{"role": "user", "content": content}],
                                         tokenize=False, add_generation_prompt=False)


def _process(processor, s: Sample, vision_only: bool, template) -> dict:
    if vision_only:
        return dict(processor(images=[load_image(s.image)], return_tensors="pt"))
    kwargs = {"text": [_prompt(s, processor, template)], "return_tensors": "pt"}
    if s.images:
        kwargs["images"] = [load_image(im) for im in s.images]
    return dict(processor(**kwargs))


def image_token_counts(processor, s: Sample, image_ids) -> list[int] | None:
    """How many image tokens each of a sample's several images becomes (each processed alone
    after the placeholder; tiles and resolutions depend on the image only), or ``None`` for
    a sample with one image or none, whose image tokens are all its own (and where no
    ``image_ids`` are given: no pooling reads one image of several)."""
    if len(s.images) < 2 or not len(image_ids):
        return None
    import torch

    token, ids = image_token(processor), torch.as_tensor(list(image_ids))
    counts = []
    for im in s.images:
        out = processor(text=[token], images=[load_image(im)], return_tensors="pt")
        counts.append(int(torch.isin(out["input_ids"][0], ids).sum()))
    return counts


def image_units(inputs: dict) -> int:
    """How many rows (tiles, crops) or, for towers that flatten patches (``image_grid_thw``),
    patch tokens the vision tower sees for the one image of a sample processed alone."""
    grid = inputs.get("image_grid_thw")
    if grid is not None:
        return int(grid.prod(-1).sum())
    pix = inputs["pixel_values"]
    return int(pix.shape[1]) if pix.dim() == 5 else int(pix.shape[0])


def _length(inputs: dict) -> int:
    ids = inputs.get("input_ids")
    return int(ids.shape[-1]) if ids is not None else 1


def collate(items: list[dict], pad_id: int) -> dict:
    """One batch from per-sample processor outputs (batch dimension 1 each)."""
    import torch

    width = max(_length(it) for it in items)
    keys = list(dict.fromkeys(k for it in items for k in it))
    out = {}
    for k in keys:
        vals = [it[k] for it in items if k in it]
        if not all(isinstance(v, torch.Tensor) for v in vals):
            continue
        per_token = len(vals) == len(items) and all(  # one value per token of input_ids
            "input_ids" in it and v.dim() == 2 and tuple(v.shape) == (1, _length(it))
            for v, it in zip(vals, items))
        if per_token:  # pad on the right
            fill = pad_id if k == "input_ids" else 0
            out[k] = torch.stack([torch.nn.functional.pad(v[0], (0, width - v.shape[1]),
                                                          value=fill) for v in vals])
            continue
        shape = [max(v.shape[d] for v in vals) for d in range(1, vals[0].dim())]
        padded = []
        for v in vals:
            pad = []
            for d in reversed(range(1, v.dim())):
                pad += [0, shape[d - 1] - v.shape[d]]
            padded.append(torch.nn.functional.pad(v, pad) if any(pad) else v)
        out[k] = torch.cat(padded)
    if "attention_mask" not in out and "input_ids" in out:
        out["attention_mask"] = (torch.arange(width)[None, :]
                                 < torch.tensor([_length(it) for it in items])[:, None]).long()
    return out


def plan_batches(processor, samples: list[Sample], batch_size: int, *, vision_only: bool,
                 max_length: int | None, pad_id: int, prompt_template: str | None = None,
                 chunk: int = 1024, image_ids=()) -> Iterator[tuple]:
    """Yield ``(row indices, model inputs, rows that hold an image, tower units of each image,
    image tokens per image of each row)`` per batch (see :func:`image_units` and
    :func:`image_token_counts`, which counts the tokens in ``image_ids``), length-sorted
    within chunks of ``chunk`` samples (images are decoded a chunk at a time)."""
    from ..extraction.batching import length_sorted_batches, split_template

    template = split_template(prompt_template)
    for lo in range(0, len(samples), chunk):
        part = samples[lo:lo + chunk]
        items = []
        for s in part:
            try:
                items.append(_process(processor, s, vision_only, template))
            except (ValueError, TypeError) as exc:  # e.g. a processor that needs an image
                what = (f"text {s.text[:60]!r}" if s.text else "no text") + (
                    ", no image" if s.image is None else ", an image")
                raise ValueError(f"the sample with {what}: {type(processor).__name__} "
                                 f"refused it: {exc}") from exc
        lengths = [_length(it) for it in items]
        if max_length is not None and not vision_only:
            long = [(part[i].text or "")[:40] for i, n in enumerate(lengths) if n > max_length]
            if long:
                raise ValueError(
                    f"{len(long)} sample(s) need more than max_length={max_length} tokens "
                    f"(images are not truncated), with texts starting {long[:3]}; shorten their "
                    "texts or raise max_length."
                )
        for b in length_sorted_batches(lengths, batch_size):
            with_image = np.array([j for j, i in enumerate(b) if part[i].image is not None],
                                  dtype=np.int64)
            units = np.array([image_units(items[b[j]]) for j in with_image], dtype=np.int64)
            counts = [image_token_counts(processor, part[i], image_ids) for i in b]
            yield b + lo, collate([items[i] for i in b], pad_id), with_image, units, counts


def image_masks(input_ids, image_ids, counts, n_images: int) -> dict:
    """``{"image": (B, T), "text": (B, T), "image0": ..., "image<n-1>": ...}`` token masks:
    the ``j``-th image's tokens are, in order, the ``counts[b][j]`` image tokens that follow
    the earlier images' (a row whose ``counts`` is ``None`` has its image tokens all in
    ``image0``)."""
    import torch

    image = torch.isin(input_ids, image_ids)
    out = {"image": image, "text": ~image}
    if n_images < 1:
        return out
    rank = image.long().cumsum(1) - 1  # rank of each image token in its row
    big = torch.iinfo(torch.long).max
    ends = torch.full((len(counts), n_images), big, dtype=torch.long)
    for b, c in enumerate(counts):
        if c is not None:
            ends[b, :len(c)] = torch.as_tensor(c).cumsum(0)
    given = [(b, sum(c)) for b, c in enumerate(counts) if c is not None]
    if given:
        found = image.sum(1).tolist()
        wrong = [(b, n, found[b]) for b, n in given if n != found[b]]
        if wrong:
            b, n, f = wrong[0]
            raise ValueError(
                f"a sample's images come to {n} image tokens when each is processed alone but "
                f"to {f} in the sample, so its image tokens cannot be told apart per image; "
                "pool over all of them with 'image:mean' instead of 'image0:...'.")
    ends = ends.to(input_ids.device)
    which = torch.searchsorted(ends, rank.clamp(min=0), right=True)  # image of each token
    for j in range(n_images):
        out[f"image{j}"] = image & (which == j)
    return out
