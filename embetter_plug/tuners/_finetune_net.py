"""The torch side of :class:`~embetter_plug.tuners.TransformerTuner`: the module (a transformer,
token pooling and a linear head), its loss, length-bucketed batches, the warm-up + linear-decay
schedule and the layer-wise learning rates."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from skorch.dataset import Dataset
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..extraction.token_pooling import make_pooler
from ..models.losses import SupConLoss

__all__ = ["FineTuneModule", "FineTuneLoss", "BucketedLoader", "WarmupLinear", "layer_groups",
           "bf16_is_fast", "fused_adamw_ok"]

#: batches per pool that are sorted by length before cutting (the rest stays shuffled)
BUCKET_POOL = 50


class FineTuneModule(nn.Module):
    """``backbone`` (a bare transformers model), pooled over its last hidden state, then a
    linear head. ``forward`` returns ``(logits, embeddings)``; padding columns that no row of
    the batch uses are cut first, so a length-bucketed batch costs what its longest text costs.
    A vision encoder takes ``pixel_values`` instead; its last ``n_patches`` tokens are the
    patches ``image:*`` poolings read (the class token comes first).
    """

    def __init__(self, backbone: nn.Module, hidden: int, n_classes: int, pooling: Any,
                 autocast: torch.dtype | None = None, n_patches: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden, n_classes)
        self.pooling = pooling
        self.autocast = autocast
        self.n_patches = n_patches

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None):
        if pixel_values is not None:
            inputs, device = {"pixel_values": pixel_values}, pixel_values.device.type
        else:
            used = attention_mask.bool().any(0)
            if not bool(used.all()):
                input_ids, attention_mask = input_ids[:, used], attention_mask[:, used]
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            device = input_ids.device.type
        with torch.autocast(device, dtype=self.autocast or torch.bfloat16,
                            enabled=self.autocast is not None):
            hidden = self.backbone(**inputs).last_hidden_state
        emb = self._pooler(hidden, attention_mask)(hidden)[:, 0]
        return self.head(emb), emb

    def _pooler(self, hidden, attention_mask):
        if attention_mask is not None:
            return make_pooler(attention_mask, [self.pooling])
        mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        patches = mask.clone()
        patches[:, :max(hidden.shape[1] - (self.n_patches or hidden.shape[1]), 0)] = 0
        return make_pooler(mask, [self.pooling], modalities={"image": patches})


class FineTuneLoss(nn.Module):
    """Cross-entropy of the head's logits, plus ``supcon`` x :class:`SupConLoss` of the pooled
    embeddings when ``supcon > 0``."""

    def __init__(self, supcon: float = 0.0, temperature: float = 0.07):
        super().__init__()
        self.ce = nn.CrossEntropyLoss()
        self.supcon = float(supcon)
        self.contrast = SupConLoss(temperature) if supcon > 0 else None

    def forward(self, outputs, y):
        logits, emb = outputs
        loss = self.ce(logits, y)
        if self.contrast is not None:
            loss = loss + self.supcon * self.contrast(emb, y)
        return loss


def _lengths(dataset) -> np.ndarray:
    """Real tokens per row of a skorch ``Dataset`` of token dicts (or a ``Subset`` of one)."""
    if isinstance(dataset, Subset):
        return _lengths(dataset.dataset)[np.asarray(dataset.indices)]
    if "attention_mask" not in dataset.X:  # images: all of one length
        return np.ones(len(dataset.X["pixel_values"]), dtype=np.int64)
    return np.asarray(dataset.X["attention_mask"]).sum(1)


class _BucketSampler:
    """Batches of similar length: each epoch shuffles the rows (torch's global generator, so a
    seeded fit repeats), sorts pools of :data:`BUCKET_POOL` batches by length, cuts them into
    batches and shuffles the batches."""

    def __init__(self, lengths: np.ndarray, batch_size: int):
        self.lengths, self.batch_size = lengths, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths)).numpy()
        pool = self.batch_size * BUCKET_POOL
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size].tolist()
                        for i in range(0, len(chunk), self.batch_size)]
        for k in torch.randperm(len(batches)).tolist():
            yield batches[k]


def BucketedLoader(dataset, batch_size: int = 16, shuffle: bool = True, **kwargs) -> DataLoader:
    """skorch ``iterator_train``: a ``DataLoader`` over length-bucketed batches."""
    kwargs.pop("drop_last", None)
    return DataLoader(dataset, batch_sampler=_BucketSampler(_lengths(dataset), int(batch_size)),
                      **kwargs)


class WarmupLinear:
    """``LambdaLR`` factor: rises linearly over ``warmup`` steps, then falls linearly to 0 at
    ``total`` steps."""

    def __init__(self, total: int, warmup: int):
        self.total, self.warmup = max(1, int(total)), int(warmup)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


def layer_groups(module: FineTuneModule, block_path: str, n_blocks: int, lr: float,
                 decay: float | None) -> list:
    """skorch ``optimizer__param_groups``: block ``i`` (of ``n_blocks``) gets
    ``lr * decay ** (n_blocks - i)``, everything outside the blocks but in the backbone (the
    embeddings) ``lr * decay ** (n_blocks + 1)``; the head keeps ``lr``. ``decay=None``: none."""
    if decay is None or decay == 1:
        return []
    groups = [(f"backbone.{block_path}.{i}.*", {"lr": lr * decay ** (n_blocks - i)})
              for i in range(n_blocks)]
    return groups + [("backbone.*", {"lr": lr * decay ** (n_blocks + 1)})]


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """Token ids and masks, right-padded to the longest text (cut at ``max_length``)."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                    return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64)}


def sorted_forward(net, X: dict[str, np.ndarray], order: np.ndarray):
    """``net.forward`` on rows in ``order`` (by length, so each batch cuts its padding), with
    the outputs put back in the rows' own order."""
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    out = net.forward(Dataset({k: v[order] for k, v in X.items()}), training=False)
    return tuple(o[torch.as_tensor(back)] for o in out)


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast runs faster than float32 here: on CUDA with bf16 support, and on
    CPUs with native bf16 instructions (AVX512-BF16 or AMX), where oneDNN computes bf16 matmuls
    directly; elsewhere bf16 is emulated and slower (see benchmarks/RESULTS.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def fused_adamw_ok(device: torch.device) -> bool:
    """Fused AdamW where torch has it for ``device`` (CPU since torch 2.4, CUDA)."""
    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
        return True
    except (RuntimeError, ValueError):
        return False
