"""Learning curves from metrics.jsonl: `curves.png` in every run's workdir, and several runs overlaid.

    python -m jaxdist.plot runs/a [runs/b ...] [--out=compare.png] [--x=step|time]

Three panels: train and test loss, train and test accuracy, and training images/s, against the step
or against training time (`train_s`: seconds spent in train steps, without compiling, evaluating or
checkpointing). The train loop redraws `curves.png` at every eval and when it ends (train/metrics.py).

matplotlib's object API (`Figure`, rendered by Agg): no pyplot, no display, no global state.
"""
import json
import math
import os

from absl import app, flags

from jaxdist.config import check_local_path
from jaxdist.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
X_AXES = {"step": "step", "time": "time in train steps (s)"}


def read_metrics(workdir: str) -> list[dict]:
    """The records of `workdir/metrics.jsonl` in file order; ConfigError naming the file and line if it
    is missing, empty or not JSON objects with a step and a split. A last line without its newline that
    is not JSON yet is skipped: a live run is writing it (or was killed mid-write; its rerun drops it)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"{workdir} has no {METRICS_FILE}; pass the --workdir of a jaxdist.main run")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                if not line.endswith("\n"):  # only the last line can lack it
                    break
                raise ConfigError(f"{path} line {number} is not JSON ({e.msg}); the file is damaged") from None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int) or "split" not in record:
                raise ConfigError(f"{path} line {number} is not a metrics record (a JSON object with 'step' and "
                                  f"'split'); the file is damaged")
            records.append(record)
    if not records:
        raise ConfigError(f"{path} has no records yet; plot after the run's first log step")
    return records


def series(records: list[dict], split: str, key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(xs, ys) of `key` in `split`'s records, one point per step in step order.

    A step logged twice keeps its last record (the train loop now drops the rows a resumed run logs
    again, older workdirs have both). A null (a non-finite value) is NaN: a gap in the line. Each process
    start counts `train_s` from zero, so x='time' lays the starts end to end: a drop in `train_s` adds the
    time logged before it.
    """
    points, offset, previous = {}, 0.0, 0.0
    for r in records:
        if "train_s" in r:
            if r["train_s"] < previous:
                offset += previous
            previous = r["train_s"]
        if r["split"] == split and key in r and (x == "step" or "train_s" in r):
            points[r["step"]] = (r["step"] if x == "step" else offset + r["train_s"],
                                 math.nan if r[key] is None else r[key])
    ordered = [points[s] for s in sorted(points)]
    return [p[0] for p in ordered], [p[1] for p in ordered]


def curves_figure(runs: dict[str, list[dict]], x: str = "step"):
    """One figure: loss, accuracy and images/s of each run (train solid, test dashed with markers)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2))  # fixed margins: constrained layout would double the drawing time
    panels = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=0.93, wspace=0.2)
    for color, (label, records) in zip(_colors(len(runs)), runs.items()):
        for panel, key in zip(panels[:2], ("loss", "accuracy")):
            panel.plot(*series(records, "train", key, x), color=color, label=f"{label} train")
            panel.plot(*series(records, "eval", key, x), color=color, linestyle="--", marker="o", markersize=3,
                       label=f"{label} test")
        panels[2].plot(*series(records, "train", "images_per_s", x), color=color, label=label)
    for panel, title in zip(panels, ("loss", "accuracy", "training images/s")):
        # A fixed title height: matplotlib's automatic one measures every tick label first (much of
        # a fresh process's first draw) to end up at the same place on these panels: the same pixels.
        panel.set_title(title, y=1.0)
        panel.set_xlabel(X_AXES[x])
        panel.grid(alpha=0.3)
        panel.legend(fontsize=7)
    panels[0].set_yscale("log")
    return fig


def _colors(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["tab10"](i % 10) for i in range(n)]


def write_curves(workdir: str) -> str:
    """`workdir/curves.png` from its metrics.jsonl; returns the path."""
    path = os.path.join(workdir, CURVES_FILE)
    curves_figure({os.path.basename(os.path.normpath(workdir)): read_metrics(workdir)}).savefig(path, dpi=100)
    return path


def overlay(workdirs: list[str], out: str, x: str = "step") -> str:
    """Several runs in one figure, labelled by directory name (the whole path where names repeat)."""
    names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    labels = names if len(set(names)) == len(names) else [os.path.normpath(w) for w in workdirs]
    curves_figure({label: read_metrics(w) for label, w in zip(labels, workdirs)}, x).savefig(out, dpi=100)
    return out


def main(argv):
    from jaxdist.cli import fail

    workdirs, out = argv[1:], flags.FLAGS.out
    if not workdirs:
        fail("name at least one run: python -m jaxdist.plot RUN [RUN ...] (the --workdir of jaxdist.main runs)")
    try:
        for what, path in [*(("RUN", w) for w in workdirs), ("--out", out)]:
            check_local_path(what, path)
        print(overlay(workdirs, out, flags.FLAGS.x))
    except ConfigError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror or e}; pass --out=PATH in a writable directory")


if __name__ == "__main__":  # the flags only here: the train loop imports this module too
    from jaxdist.cli import parse_flags

    flags.DEFINE_string("out", "compare.png", "The PNG to write.")
    flags.DEFINE_enum("x", "step", list(X_AXES), "Horizontal axis: the step, or training time in seconds.")
    app.run(main, flags_parser=parse_flags)
