"""A matplotlib figure of a report: one panel per metric, methods as lines over layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atlascli.registry.files import atomic_write_bytes


def plot_report(report: Any, path: Path) -> None:
    """Write the figure (format from the suffix) atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, dict[str, Any], str, list[str]]] = []
    cols = [str(la) for la in report.layers]
    if report.quality:
        panels += [("AUROC", report.quality, "auroc", cols), ("AP", report.quality, "ap", cols)]
    if report.retrieval:
        panels += [("MRR", report.retrieval, "mrr", cols), ("MPP", report.retrieval, "mpp", cols)]
    if report.steering:
        panels.append(("faithfulness (%)", report.steering["cells"], "faithfulness", report.steering["columns"]))
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 * max(len(panels), 1), 3.4), squeeze=False)
    for ax, (title, block, key, columns) in zip(axes[0], panels):
        rows = [m for m in [*report.methods, "random"] if m in block]
        for m in rows:
            ys = [block[m][c][key] if block[m][c][key] is not None else float("nan") for c in columns]
            ax.plot(columns, ys, marker="o", label=m, linestyle="--" if m == "random" else "-")
        if key == "ap" and "baseline" in block:
            ax.plot(columns, [block["baseline"][c]["positive_rate"] for c in columns], "k:", label="positive rate")
        if key in ("mrr", "mpp") and "baseline" in block:
            ax.plot(columns, [block["baseline"][c][key] for c in columns], "k:", label="random")
        ax.set_title(title)
        ax.set_xlabel("layer")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{report.subject} -> {report.atlas}", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_multi(multi: Any, path: Path) -> None:
    """One figure for several subjects (Table 7): a panel per metric, a colour per method, a line style per subject."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = {"quality": ("auroc", "ap"), "retrieval": ("mrr", "mpp"), "steering": ("faithfulness",)}
    panels = [(kind, key) for kind in multi.table for key in metrics[kind]]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 * max(len(panels), 1), 3.6), squeeze=False)
    styles = ["-", "--", ":", "-."]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (kind, key) in zip(axes[0], panels):
        for si, (subject, by_layer) in enumerate(multi.table[kind].items()):
            columns = list(by_layer)
            for mi, m in enumerate([*multi.methods, "random"]):
                ys = [by_layer[c].get(m, {}).get(key) for c in columns]
                ys = [float("nan") if y is None else y for y in ys]
                ax.plot(columns, ys, marker="o", color="k" if m == "random" else colours[mi % len(colours)],
                        linestyle=styles[si % len(styles)], label=f"{m} · {subject}" if m != "random" or si == 0 else None)
        ax.set_title(f"{kind}: {key}")
        ax.set_xlabel("layer")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{', '.join(multi.subjects)} -> {multi.atlas}", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
