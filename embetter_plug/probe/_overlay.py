"""What the probing statistics add to a layer plot: the selection-free estimate of the best
probe (a line with its interval) and each part's control-task score (dotted, same colour), so
the gap between a solid and a dotted line is that probe's selectivity."""

from __future__ import annotations

from .stats import CONTROL


def draw_statistics(disp, results, metric: str) -> None:
    """Add to a drawn ``LayerMetricDisplay`` what ``results`` holds; sets ``selection_`` (the
    line, or None) and ``controls_`` (series label -> dotted line)."""
    ax = disp.ax_
    disp.selection_, disp.controls_ = None, {}
    shown = disp.summary[disp.summary["part"] != "dummy"]
    keys = [*results.context, "layer", "part"]
    if CONTROL + metric in set(results.frame_["metric"]):
        ctrl = results.summary(CONTROL + metric)
        wanted = set(map(tuple, shown[keys].astype(str).to_numpy()))
        ctrl = ctrl[[tuple(r) in wanted for r in ctrl[keys].astype(str).to_numpy()]]
        series = disp.series or ["part"]
        for key, g in ctrl.groupby(series, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            label = " | ".join(map(str, key))
            g = g.sort_values("layer")
            color = disp.lines_[label].get_color() if label in disp.lines_ else "0.5"
            (disp.controls_[label],) = ax.plot(g["layer"].astype(int), g["mean"], linestyle=":",
                                               marker=".", color=color,
                                               label=f"{label} control task")
    sf = results.selection_free(metric)
    if sf is not None:
        disp.selection_ = ax.axhline(sf["mean"], color="black", linewidth=1.2,
                                     label=f"best, selection-free ({sf['mean']:.3f})")
        if sf["low"] == sf["low"]:  # not NaN
            ax.axhspan(sf["low"], sf["high"], color="black", alpha=0.08, linewidth=0)
    if disp.controls_ or disp.selection_ is not None:
        ax.legend(fontsize="small")
