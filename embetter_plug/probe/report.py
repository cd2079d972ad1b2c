"""An interactive, self-contained HTML report of probe results (no server, no network).

The page holds the summary as inline JSON and draws the layer curves as SVG with a little inline
JavaScript: pick dataset, model, pooling and metric, see one line per part with a ±std band, the
dummy baseline, the selection-free estimate of the best probe, and the table of every metric
(with selectivity, corrected p-values and MDL compression where computed) with the best marked.
The initial choice can be set in the address, e.g. ``report.html#metric=f1&pooling=mean``. With
``patterns=``, a section below shows one text's attention pattern per layer and head (the view
of :meth:`embetter_plug.attention.patterns.AttentionPattern.to_html`). The page itself is built in
``_report_page``; this module reads results files and writes the page.
"""

from __future__ import annotations

from pathlib import Path

from ._report_page import report_rows, side_by_side, write_single
from .results import ProbeResults

__all__ = ["write_report", "report_rows"]


def write_report(results, path, *, title: str | None = None, patterns=None,
                 image_attention=None) -> Path:
    """Write the interactive report of ``results`` (a ``ProbeResults`` or a results file) to ``path``.

    A dict ``{target: results}`` (from ``probe_layers`` with several targets) gives one report
    per target, side by side on one page (each with its own plot, selectors and table).

    ``patterns``: an :class:`~embetter_plug.attention.patterns.AttentionPattern` (from
    :func:`~embetter_plug.attention.patterns.attention_patterns`), or a dict ``{model label: pattern}``,
    adds a section showing that text's attention with the tokens on both axes and a layer and
    head (and model) selector. ``image_attention``: an
    :class:`~embetter_plug.attention.image.ImageAttention` adds a section showing where on the
    picture a token looks, with a layer and head selector.

    Examples
    --------
    >>> import numpy as np
    >>> from embetter_plug import probe_layers
    >>> from embetter_plug.probe import write_report
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20)
    >>> res = probe_layers(rng.normal(size=(40, 2, 1, 4)) + y[:, None, None, None], y, cv=2)
    >>> write_report(res, "probe_report.html").name
    'probe_report.html'
    """
    if isinstance(results, dict):
        return side_by_side({name: _as_results(res) for name, res in results.items()}, path,
                            title=title, patterns=patterns, image_attention=image_attention)
    return write_single(_as_results(results), path, title=title, patterns=patterns,
                        image_attention=image_attention)


def _as_results(results) -> ProbeResults:
    """``results`` itself, or the ``ProbeResults`` read from the results file it names."""
    return results if isinstance(results, ProbeResults) else ProbeResults.read(results)
