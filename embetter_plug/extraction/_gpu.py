"""The CUDA batch loop: keep the GPU busy while the host prepares and collects batches.

On a CUDA device the encoder

- pads the next batch, pins it and queues its host-to-device copy while the current forward runs;
- tokenizes the next chunk of texts in a background thread meanwhile (the encoder wraps its
  chunk plans in :func:`embetter_plug.extraction.batching.prefetch`);
- copies each result into pinned host memory without blocking and waits only on that copy's
  event, one batch later, so there is no other synchronisation per batch.

Autocast to bfloat16/float16 follows the encoder's ``dtype`` and is set up by the caller.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Iterator



def overlapped_batches(prepare: Callable, run: Callable, batches: Iterable, *,
                       cuda: bool) -> Iterator:
    """Yield ``(row_indices, numpy activations)`` with one batch in flight.

    ``prepare(batch, pin)`` returns ``(idx, kwargs, mask)`` on the device (copies queued with
    ``non_blocking``); ``run(kwargs, mask)`` queues the forward and returns the device result.
    Batch ``b + 1`` is prepared before batch ``b``'s result is waited for. ``batches`` is read
    lazily, one batch ahead.
    """
    import torch

    batches = iter(batches)
    pending: deque = deque()
    first = next(batches, None)
    nxt = prepare(first, cuda) if first is not None else None
    while nxt is not None:
        idx, kwargs, mask = nxt
        acts = run(kwargs, mask)
        event = None
        if cuda and isinstance(acts, torch.Tensor):  # a sink may hand back host objects
            host = torch.empty(acts.shape, dtype=acts.dtype, pin_memory=True)
            host.copy_(acts, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = acts
        following = next(batches, None)
        nxt = prepare(following, cuda) if following is not None else None
        pending.append((idx, host, event))
        if len(pending) > 1:
            yield _collect(*pending.popleft())
    while pending:
        yield _collect(*pending.popleft())


def _collect(idx, host, event):
    if event is not None:
        event.synchronize()  # waits for this batch's copy only
    return idx, host.numpy() if hasattr(host, "numpy") else host
