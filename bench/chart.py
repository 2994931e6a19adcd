"""Line charts as PNG for the benchmark scripts: matplotlib when it is importable, else the
psa_chart binary built next to psa_bench (the psa tool's rasteriser and libpng), so that a device
with only torch and the built binaries still gets its chart.

A chart is a dict: {"title", "x_label", "y_label", "y_from_zero", "series": [{"name", "x", "y"}]}.
"""
import json
import os
import subprocess
import tempfile


def _with_matplotlib(chart, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    for s in chart["series"]:
        points = sorted(zip(s["x"], s["y"]))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=s["name"])
    ax.set_title(chart.get("title", ""))
    ax.set_xlabel(chart.get("x_label", ""))
    ax.set_ylabel(chart.get("y_label", ""))
    if chart.get("y_from_zero", True):
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_chart(chart, path, chart_tool=""):
    """Writes `chart` to `path`; returns how ("matplotlib" or the psa_chart path), or None with a
    printed reason when neither is available."""
    try:
        _with_matplotlib(chart, path)
        return "matplotlib"
    except ImportError:
        pass
    if not chart_tool or not os.path.exists(chart_tool):
        print(f"no chart written: matplotlib is missing and psa_chart was not found at "
              f"{chart_tool or '(not given)'}")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(chart, f)
        spec = f.name
    try:
        subprocess.run([chart_tool, spec, path], check=True)
    finally:
        os.unlink(spec)
    return chart_tool
