"""The report's own figures: a candidate's subject-level values by label (box and strip;
scatter for a continuous label; Kaplan–Meier curves for survival), drawn at print size.

Points are subjects, never cells or patches: the figure shows what was tested. No subject is
named on a figure (a PNG cannot be searched for identifiers).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from .content import Figure

__all__ = ["kaplan_meier", "distribution_figure", "png_figure"]

_CASE, _CONTROL = "#c0392b", "#34495e"


def png_figure(fig, title: str, caption: str, width_in: float) -> Figure:
    """Render a matplotlib figure once as PNG (150 dpi: sharp in print, small inline)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    plt.close(fig)
    return Figure(title=title, caption=caption, png=buf.getvalue(), width_in=width_in)


def kaplan_meier(time, event) -> pd.DataFrame:
    """The Kaplan–Meier estimate: ``time, at_risk, events, survival`` at each distinct time
    (right-censored data; ties of an event and a censoring count the event first, as usual)."""
    t = np.asarray(time, float)
    e = np.asarray(event, bool)
    order = np.argsort(t, kind="stable")
    t, e = t[order], e[order]
    times = np.unique(t)
    at_risk = len(t) - np.searchsorted(t, times, side="left")
    events = np.array([e[t == u].sum() for u in times])
    surv = np.cumprod(1 - events / at_risk)
    return pd.DataFrame({"time": times, "at_risk": at_risk, "events": events, "survival": surv})


def _box_strip(ax, groups: list[tuple[str, np.ndarray, np.ndarray]], rng) -> None:
    """Box per group with every subject as a point (hollow: held-out subjects)."""
    data = [v for _, v, _ in groups]
    ax.boxplot(data, widths=0.5, showfliers=False, medianprops={"color": "black"},
               tick_labels=[f"{name}\n(n = {len(v)})" for name, v, _ in groups])
    for i, (_, v, held) in enumerate(groups, start=1):
        x = i + rng.uniform(-0.15, 0.15, len(v))
        colour = _CASE if i == len(groups) and len(groups) == 2 else _CONTROL
        ax.scatter(x[~held], v[~held], s=14, color=colour, alpha=0.7, lw=0, zorder=3)
        ax.scatter(x[held], v[held], s=16, facecolors="none", edgecolors=colour, lw=0.9, zorder=3)


def distribution_figure(values: np.ndarray, design: dict, obs: pd.DataFrame, *, feature: str,
                        label: str, statistic: str, heldout: np.ndarray | None = None,
                        width_in: float = 6.0) -> Figure:
    """The candidate's per-subject ``values`` by the label described by ``design`` (the
    Findings manifest's record of the label: kind, column or time/event, levels)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    values = np.asarray(values, float)
    held = np.zeros(len(values), bool) if heldout is None else np.asarray(heldout, bool)
    rng = np.random.default_rng(0)  # jitter only
    kind = design.get("kind", "binary")
    fig, ax = plt.subplots(figsize=(width_in, width_in * 0.55), constrained_layout=True)
    what = f"{feature} ({statistic} activation per subject)"
    if kind == "survival":
        time = pd.to_numeric(obs[design["time"]], errors="coerce").to_numpy(float)
        event = pd.to_numeric(obs[design["event"]], errors="coerce").to_numpy(float)
        ok = np.isfinite(time) & np.isfinite(event) & np.isfinite(values)
        high = values >= np.median(values[ok])
        for name, sel, colour in (("high", high, _CASE), ("low", ~high, _CONTROL)):
            km = kaplan_meier(time[ok & sel], event[ok & sel] > 0)
            ax.step(np.r_[0, km["time"]], np.r_[1, km["survival"]], where="post", color=colour,
                    label=f"{feature} {name} (n = {int((ok & sel).sum())}, "
                          f"{int(event[ok & sel].sum())} events)")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"{design['time']}")
        ax.set_ylabel("proportion without event")
        ax.legend(fontsize=8, frameon=False, loc="lower left")
        caption = (f"Kaplan–Meier curves of subjects above and below the median of {what}. "
                   "The curves illustrate; the test reported is on the continuous value.")
    elif kind == "continuous":
        y = pd.to_numeric(obs[design["column"]], errors="coerce").to_numpy(float)
        ax.scatter(y[~held], values[~held], s=14, color=_CONTROL, alpha=0.7, lw=0, label="discovery")
        if held.any():
            ax.scatter(y[held], values[held], s=16, facecolors="none", edgecolors=_CONTROL, lw=0.9,
                       label="held-out")
            ax.legend(fontsize=8, frameon=False)
        ax.set_xlabel(str(design["column"]))
        ax.set_ylabel(what)
        caption = f"Each point is one subject: {what} against {design['column']}."
    else:
        col = obs[design["column"]].astype(str)
        levels = [str(v) for v in design.get("levels", sorted(col.unique()))]
        if kind == "binary" and "case" in design:  # control first, case last (and red)
            levels = [str(design.get("control")), str(design["case"])]
        groups = [(lv, values[(col == lv).to_numpy()], held[(col == lv).to_numpy()]) for lv in levels]
        groups = [g for g in groups if len(g[1])]
        _box_strip(ax, groups, rng)
        ax.set_xlabel(str(design["column"]))
        ax.set_ylabel(what)
        caption = (f"Each point is one subject ({what}); boxes show the median and quartiles. "
                   + ("Hollow points are held-out subjects (not used to select candidates)."
                      if held.any() else ""))
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"{feature} by {label}", fontsize=10, loc="left")
    return png_figure(fig, f"{feature} by {label}", caption.strip(), width_in)
