"""Visual reports: a PNG per case and an HTML page per cohort.

Case PNG: FLAIR (top row) and T1ce (bottom row) in the axial, coronal and sagittal
planes, each at the slice where the whole tumor's cross-section is largest, with the
outline of every segment in its color (:data:`labels.SEGMENTS`), lightly filled. Images are shown in
the radiological convention, as 3D Slicer does: the patient's right on the viewer's
left in axial and coronal views, anterior on the left in sagittal views; each panel is
lettered, and pixels keep their physical aspect ratio.

Cohort HTML: the summary table, one row per case with volumes, metrics (with ground
truth) and the case's PNG as a thumbnail (a path relative to the page), and a box plot
of Dice per region (embedded) when ground truth is present.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .atomic import write_atomic
from .case import MODALITIES, Case
from .evaluation import Stats, metric_column, summarize
from .export import volumes_ml
from .geometry import Reorientation
from .labels import REGIONS, SEGMENTS

# Canonical RAS axes (x, y, z) shown in each plane: (fixed axis, horizontal axis, vertical axis),
# and the letters at the panel's left, right, top and bottom.
PLANES: dict[str, tuple[int, int, int, str]] = {
    "axial": (2, 0, 1, "RLAP"),
    "coronal": (1, 0, 2, "RLSI"),
    "sagittal": (0, 1, 2, "APSI"),
}
SHOWN_MODALITIES: tuple[str, ...] = ("flair", "t1ce")
DISPLAY = {"flair": "FLAIR", "t1ce": "T1ce"}
REGION_COLORS = {"WT": "#8ce0e4", "TC": "#b48cc8", "ET": "#ffb000"}
# Outlines from the outside in: the necrosis inside the enhancing rim is drawn last, so the rim's inner edge shows
# in the necrosis color instead of lying under the enhancing tumor's outline.
OUTLINE_ORDER = ("edema", "enhancing", "necrosis")


def _rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return (color[0] / 255.0, color[1] / 255.0, color[2] / 255.0)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of a mask, ``margin`` voxels wider (clipped); the whole array when the mask is empty."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    out = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        out.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(out)


def largest_tumor_slices(labels: np.ndarray, fallback: np.ndarray) -> dict[str, int]:
    """Per plane, the index along its fixed axis of the slice with the most tumor voxels (canonical arrays).

    Without tumor, the middle slice of ``fallback`` (the brain mask).
    """
    tumor = labels > 0
    out = {}
    for plane, (fixed, *_rest) in PLANES.items():
        other = tuple(a for a in range(3) if a != fixed)
        if tumor.any():
            out[plane] = int(np.argmax(tumor.sum(axis=other)))
        else:
            hits = np.flatnonzero(fallback.any(axis=other))
            out[plane] = int((hits[0] + hits[-1]) // 2) if hits.size else labels.shape[fixed] // 2
    return out


def _plane_image(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D slice of a canonical volume as displayed: rows bottom-to-top (origin lower), columns left-to-right."""
    fixed, horizontal, vertical, _ = PLANES[plane]
    image = np.take(volume, index, axis=fixed)  # axes: the two others, in increasing order
    if horizontal < vertical:
        image = image.T  # rows = vertical axis, columns = horizontal axis
    # Radiological convention: R (axial, coronal) and A (sagittal) on the viewer's left, i.e. columns run against the axis.
    return image[:, ::-1]


def case_figure(case: Case, labels: np.ndarray, case_id: str, model_id: str = "") -> Figure:
    """The case report figure (see the module docstring); ``labels`` are internal labels on the case's grid."""
    orientation = Reorientation.of(case.reference)
    spacing_ijk = np.asarray(case.reference.GetSpacing(), dtype=float)
    spacing = [float(spacing_ijk[2 - a]) for a in orientation.source_axis]  # canonical x, y, z
    canonical = {m: orientation.to_canonical(case.data[MODALITIES.index(m)]) for m in SHOWN_MODALITIES}
    brain = orientation.to_canonical((case.data != 0).any(axis=0))
    segmentation = orientation.to_canonical(labels)
    box = _box(brain | (segmentation > 0), margin=3)
    brain, segmentation = brain[box], segmentation[box]
    canonical = {m: v[box] for m, v in canonical.items()}
    slices = largest_tumor_slices(segmentation, brain)
    volumes = volumes_ml(labels, case.voxel_volume_ml)

    figure = Figure(figsize=(11.0, 8.0), dpi=100, facecolor="black")
    axes = figure.subplots(len(SHOWN_MODALITIES), len(PLANES))
    for row, modality in enumerate(SHOWN_MODALITIES):
        volume = canonical[modality]
        inside = volume[brain]
        low, high = np.percentile(inside, (0.5, 99.5)) if inside.size else (float(volume.min()), float(volume.max()))
        for col, (plane, (_fixed, horizontal, vertical, letters)) in enumerate(PLANES.items()):
            ax = axes[row, col]
            image = _plane_image(volume, plane, slices[plane])
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, origin="lower", interpolation="bilinear")
            ax.set_aspect(spacing[vertical] / spacing[horizontal])
            segment_slice = _plane_image(segmentation, plane, slices[plane])
            fields = {s.key: (segment_slice == s.label).astype(np.float32) for s in SEGMENTS if (segment_slice == s.label).any()}
            for segment in SEGMENTS:
                if segment.key in fields:
                    ax.contourf(fields[segment.key], levels=[0.5, 1.5], colors=[_rgb(segment.color)], alpha=0.22)
            for segment in sorted(SEGMENTS, key=lambda s: OUTLINE_ORDER.index(s.key)):
                if segment.key in fields:
                    ax.contour(fields[segment.key], levels=[0.5], colors=[_rgb(segment.color)], linewidths=1.3)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            box = {"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0}
            style = {"color": "#d0d0d0", "fontsize": 9, "transform": ax.transAxes, "bbox": box}
            ax.text(0.01, 0.5, letters[0], ha="left", va="center", **style)
            ax.text(0.99, 0.5, letters[1], ha="right", va="center", **style)
            ax.text(0.5, 0.99, letters[2], ha="center", va="top", **style)
            ax.text(0.5, 0.01, letters[3], ha="center", va="bottom", **style)
            if row == 0:
                ax.set_title(plane, color="white", fontsize=11)
            if col == 0:
                ax.set_ylabel(DISPLAY[modality], color="white", fontsize=12)
    head = f"{case_id}" + (f"   model {model_id}" if model_id else "")
    regions = "   ".join(f"{name} {volumes[name]:.1f} mL" for name in REGIONS)
    figure.suptitle(f"{head}\n{regions}", color="white", fontsize=12)
    handles = [Line2D([], [], color=_rgb(s.color), linewidth=3, label=f"{s.name} ({volumes[s.key]:.1f} mL)") for s in SEGMENTS]
    if not (segmentation > 0).any():
        handles.append(Line2D([], [], linestyle="none", label="no tumor segmented"))
    legend = figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=10)
    for text in legend.get_texts():
        text.set_color("white")
    figure.subplots_adjust(left=0.04, right=0.99, top=0.88, bottom=0.07, wspace=0.03, hspace=0.08)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor=figure.get_facecolor())
    return buffer.getvalue()


def write_case_report(path: Path, case: Case, labels: np.ndarray, case_id: str, model_id: str = "") -> Path:
    """Write the case report PNG atomically."""
    return write_atomic(path, _png(case_figure(case, labels, case_id, model_id)))


def dice_boxplot_png(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """PNG of a box plot of Dice per region (each case a dot), or None when no row has a Dice."""
    values = {
        r: [float(row[c]) for row in rows if (c := metric_column("dice", r)) in row and row[c] not in (None, "")] for r in REGIONS
    }
    if not any(values.values()):
        return None
    figure = Figure(figsize=(6.0, 3.6), dpi=100)
    ax = figure.subplots()
    names = list(REGIONS)
    parts = ax.boxplot([values[r] for r in names], patch_artist=True, widths=0.5, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names)
    for patch, name in zip(parts["boxes"], names, strict=True):
        patch.set_facecolor(REGION_COLORS[name])
        patch.set_alpha(0.6)
    for median in parts["medians"]:
        median.set_color("black")
    jitter = np.random.default_rng(0)
    for position, name in enumerate(names, start=1):
        points = values[name]
        ax.scatter(position + jitter.uniform(-0.12, 0.12, len(points)), points, s=14, color="black", zorder=3)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice")
    ax.set_title(f"Dice per region ({max(len(v) for v in values.values())} cases)")
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def _cell(value: Any, digits: int = 2) -> str:
    if value in (None, ""):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _stats_cell(stats: Stats | None, digits: int) -> str:
    if stats is None:
        return ""
    return f"{stats.mean:.{digits}f} ± {stats.sd:.{digits}f} ({stats.median:.{digits}f})"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: middle; }
th { background: #f0f0f0; } td.id, th.id { text-align: left; }
tr.failed td { background: #fde8e8; } td.error { text-align: left; color: #a00; max-width: 420px; }
div.warning { text-align: left; color: #a05a00; font-size: 12px; max-width: 420px; }
img.thumb { width: 260px; display: block; }
.note { color: #555; font-size: 13px; }
"""

VOLUME_KEYS: tuple[str, ...] = ("necrosis", "edema", "enhancing", *REGIONS)


def cohort_html(rows: Sequence[Mapping[str, Any]], page_dir: Path, title: str, notes: Sequence[str] = ()) -> str:
    """The cohort page. ``rows`` are batch rows (``case_id``, ``status``, ``error``, ``<key>_ml`` volumes,
    metric columns, ``report`` = path of the case PNG); thumbnails link relative to ``page_dir``."""
    ok = [row for row in rows if row.get("status") != "failed"]
    has_metrics = any(row.get(metric_column("dice", "WT")) not in (None, "") for row in rows)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{len(rows)} cases: {len(ok)} with results, {len(rows) - len(ok)} failed. '
        f"Written {html.escape(time.strftime('%Y-%m-%d %H:%M'))}.</p>",
    ]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in notes]

    parts.append("<h2>Summary</h2><table><tr><th class='id'>region</th><th>cases</th><th>volume mL mean</th><th>median</th>")
    if has_metrics:
        parts.append("<th>Dice</th><th>HD95 (mm)</th><th>sensitivity</th><th>specificity</th>")
    parts.append("</tr>")
    if has_metrics:
        parts.append("<tr><th colspan='4'></th>" + "<th>mean ± sd (median)</th>" * 4 + "</tr>")
    summary = summarize(ok) if has_metrics else {}
    for region in REGIONS:
        volumes = [float(v) for row in ok if (v := row.get(f"{region}_ml")) not in (None, "")]
        mean = f"{np.mean(volumes):.1f}" if volumes else ""
        median = f"{np.median(volumes):.1f}" if volumes else ""
        parts.append(f"<tr><td class='id'>{region}</td><td>{len(volumes)}</td><td>{mean}</td><td>{median}</td>")
        if has_metrics:
            stats = summary.get(region, {})
            parts += [
                f"<td>{_stats_cell(stats.get('dice'), 3)}</td><td>{_stats_cell(stats.get('hd95'), 1)}</td>",
                f"<td>{_stats_cell(stats.get('sensitivity'), 3)}</td><td>{_stats_cell(stats.get('specificity'), 4)}</td>",
            ]
        parts.append("</tr>")
    parts.append("</table>")

    if has_metrics:
        png = dice_boxplot_png(ok)
        if png:
            encoded = base64.b64encode(png).decode()
            parts.append(f'<h2>Dice per region</h2><img alt="box plot of Dice per region" src="data:image/png;base64,{encoded}">')
        parts.append(
            '<p class="note">Empty regions: both empty gives Dice 1 and HD95 0; only one empty gives Dice 0 and HD95 374 mm.</p>'
        )

    parts.append("<h2>Cases</h2><table><tr><th class='id'>case</th><th>status</th>")
    parts += [f"<th>{key} mL</th>" for key in VOLUME_KEYS]
    if has_metrics:
        parts += [f"<th>Dice {r}</th>" for r in REGIONS] + [f"<th>HD95 {r} mm</th>" for r in REGIONS]
    parts.append("<th class='id'>report</th></tr>")
    for row in rows:
        failed = row.get("status") == "failed"
        case_id = str(row.get("case_id", ""))
        parts.append(f"<tr class='{'failed' if failed else ''}'><td class='id'>{html.escape(case_id)}</td>")
        warnings = f"<div class='warning'>{html.escape(str(row['warnings']))}</div>" if row.get("warnings") else ""
        parts.append(f"<td>{_cell(row.get('status'))}{warnings}</td>")
        if failed:
            span = len(VOLUME_KEYS) + (2 * len(REGIONS) if has_metrics else 0) + 1
            parts.append(f"<td class='error' colspan='{span}'>{_cell(row.get('error'))}</td></tr>")
            continue
        parts += [f"<td>{_cell(row.get(f'{key}_ml'), 1)}</td>" for key in VOLUME_KEYS]
        if has_metrics:
            parts += [f"<td>{_cell(row.get(metric_column('dice', r)), 3)}</td>" for r in REGIONS]
            parts += [f"<td>{_cell(row.get(metric_column('hd95', r)), 1)}</td>" for r in REGIONS]
        report = row.get("report")
        if report and Path(report).is_file():
            link = html.escape(Path(os.path.relpath(Path(report).resolve(), page_dir.resolve())).as_posix(), quote=True)
            image = f"<img class='thumb' loading='lazy' alt='{html.escape(case_id, quote=True)}' src='{link}'>"
            parts.append(f"<td class='id'><a href='{link}'>{image}</a></td>")
        else:
            parts.append("<td class='id'></td>")
        parts.append("</tr>")
    parts.append("</table></body></html>\n")
    return "\n".join(parts)


def write_cohort_report(
    path: Path, rows: Sequence[Mapping[str, Any]], title: str = "Brain tumor segmentation", notes: Sequence[str] = ()
) -> Path:
    """Write the cohort HTML page atomically (thumbnails relative to its folder)."""
    return write_atomic(path, cohort_html(rows, path.parent, title, notes))
