"""Probing: where in a model is the signal for my labels?

- :func:`probe_layers` fits one cross-validated probe per layer x part of an activation array
  (plus a dummy baseline) and returns :class:`ProbeResults`.
- :class:`OnlineProbes` trains a probe per layer x part from streamed batches, never holding
  all activations.
- :class:`LayerMetricDisplay` plots a metric against layer; :func:`write_report` writes an
  interactive, self-contained HTML page of the results.
- Statistics you can believe: the selection-free (nested CV) estimate of the best probe,
  corrected intervals and comparisons, permutation p-values with Holm's correction
  (:mod:`~embetter_plug.probe.stats`), control tasks and selectivity
  (:mod:`~embetter_plug.probe.control`) and MDL probing (:mod:`~embetter_plug.probe.mdl`).
"""

from .display import LayerMetricDisplay
from .offline import default_probe, probe_layers
from .online import OnlineProbes
from .report import write_report
from .results import ProbeResults

__all__ = ["probe_layers", "ProbeResults", "OnlineProbes", "LayerMetricDisplay", "write_report",
           "default_probe"]
