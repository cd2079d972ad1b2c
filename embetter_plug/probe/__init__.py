"""Probing: where in a model is the signal for my labels?

- :func:`probe_layers` fits one cross-validated probe per layer x part of an activation array
  (plus a dummy baseline) and returns :class:`ProbeResults`.
- :class:`OnlineProbes` trains a probe per layer x part from streamed batches, never holding
  all activations.
- :class:`LayerMetricDisplay` plots a metric against layer; :func:`write_report` writes an
  interactive, self-contained HTML page of the results.
"""

from .display import LayerMetricDisplay
from .offline import default_probe, probe_layers
from .online import OnlineProbes
from .report import write_report
from .results import ProbeResults

__all__ = ["probe_layers", "ProbeResults", "OnlineProbes", "LayerMetricDisplay", "write_report",
           "default_probe"]
