"""The structure picture: kept QK and VO dimensions per head and FFN width per layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_structure(structure: dict, path: Path, title: str = "") -> Path:
    """Heatmaps [layer x head] of kept QK and VO dims, and a bar chart of kept FFN neurons per layer."""
    layers = structure["layers"]
    qk = np.array([layer["qk_per_head"] for layer in layers])
    vo = np.array([layer["vo_per_head"] for layer in layers])
    ffn = np.array([layer["ffn"] for layer in layers])
    head_dim = max(int(qk.max(initial=0)), int(vo.max(initial=0)), 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(layers) + 2.2), gridspec_kw={"width_ratios": [3, 3, 2]})
    for ax, values, name in ((axes[0], qk, "QK dims kept"), (axes[1], vo, "VO dims kept")):
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=structure.get("head_dim", head_dim), aspect="auto")
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color="white" if value < head_dim / 2 else "black")
        fig.colorbar(image, ax=ax, fraction=0.046)
    axes[2].barh(range(len(ffn)), ffn, color="tab:orange")
    axes[2].set_yticks(range(len(ffn)))
    axes[2].invert_yaxis()
    axes[2].set_title("FFN neurons kept")
    axes[2].set_xlabel("neurons")
    summary = f"heads kept {structure['heads_kept']}/{structure['heads_total']}"
    fig.suptitle(f"{title}  ({summary})" if title else summary)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
