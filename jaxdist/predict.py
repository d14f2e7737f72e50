"""Recognise images with a trained run: python -m jaxdist.predict --workdir=runs/digits PATH...

PATH: image files or folders of them (JPEG/PNG, any size; folders are read at any depth, sorted). Each
image goes through the run's own eval transform and the model of one kept checkpoint (--step, default
the latest), on all devices (--mesh, default data=-1: the batch split over every device); the checkpoint
loads onto this mesh whatever mesh trained it. Prints one line per image, "path: class (probability),
..." for the --top_k classes, and with --output=FILE.jsonl or FILE.csv writes them.

Exit codes: 0 every image predicted; 2 bad input, one line naming it (workdir, checkpoint, flags, paths);
5 some images could not be read: each is named with the reason, in the log and the output file, and
all the others were predicted.
"""
if __name__ == "__main__":  # first: a restart with malloc's huge pages (jaxdist/host_memory.py) costs ~50 ms
    from jaxdist import host_memory
    host_memory.restart_with_huge_pages()

import csv
import json
import os
import sys
import time

from absl import app, flags, logging

from jaxdist import cli
from jaxdist.config import check_local_path
from jaxdist.errors import ConfigError

EXIT_CODE_UNREADABLE = 5
OUTPUT_FORMATS = (".jsonl", ".csv")

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's --workdir.")
_STEP = flags.DEFINE_integer("step", 0, "The kept checkpoint to predict with; 0: the latest.", lower_bound=0)
_OUTPUT = flags.DEFINE_string("output", None, "Also write the predictions to this new .jsonl or .csv file.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Classes per image, most probable first; 0: 5 (or all, if fewer).",
                             lower_bound=0)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Images per global batch; 0: 256, rounded up to a multiple "
                                   "of the devices that split a batch.", lower_bound=0)
_MESH = flags.DEFINE_string("mesh", "", "Inference mesh as AXIS=SIZE,... over stage, data, fsdp, spatial, model "
                            "(params placed by the run's sharding rules); default: data=-1 (all devices).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "Simulated CPU devices; 0: JAX's default.", lower_bound=0)
flags.mark_flags_as_required(["workdir"])


def main(argv):
    paths = argv[1:]
    try:
        cli.quiet_library_logs()
        check_local_path("--workdir", _WORKDIR.value)
        output = _check_output(_OUTPUT.value)
        cli.join(_CPU_DEVICES.value)
        from jaxdist import inference  # after device setup: importing it must not start JAX's backends first

        files = inference.image_files(paths)
        run = inference.open_run(_WORKDIR.value, _STEP.value)
        predictor = inference.Predictor(run, inference.parse_mesh(_MESH.value), _BATCH_SIZE.value, _TOP_K.value)
    except ConfigError as e:
        cli.fail(str(e))
    unreadable = predict(predictor, files, output)
    if unreadable:
        cli.fail(f"{len(unreadable)} of {len(files)} images could not be read (named above"
                 f"{' and in ' + output if output else ''}); the other {len(files) - len(unreadable)} were predicted",
                 EXIT_CODE_UNREADABLE)


def _check_output(path: str | None) -> str | None:
    """The output file, refused before any work if it would overwrite a file or cannot be written."""
    if path is None:
        return None
    check_local_path("--output", path)
    if not path.endswith(OUTPUT_FORMATS):
        raise ConfigError(f"--output={path}: the name must end in {' or '.join(OUTPUT_FORMATS)} (its format)")
    if os.path.exists(path):
        raise ConfigError(f"--output={path} exists; predict never overwrites a file: move it or choose another name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ConfigError(f"--output={path}: cannot write in {folder} (missing or read-only)")
    return path


def predict(predictor, files: list[str], output: str | None) -> list[str]:
    """Predicts every file, prints (and writes) one record per file in order; returns the unreadable ones."""
    from jaxdist.parallel import mesh as mesh_lib
    from jaxdist.train.loop import progress_bar

    primary, names = mesh_lib.is_primary(), predictor.run.class_names
    records, unreadable, position = [], [], 0
    start = time.perf_counter()
    with progress_bar(len(files), 0, "predict", unit="image") as progress:
        for batch in predictor.batches(files):
            probabilities, classes, mask = predictor(batch)
            rows = min(predictor.batch_size, len(files) - position)  # the last batch's padding has no file
            for row in range(rows):
                path = files[position + row]
                if mask[row]:
                    top = [{"class": names[c], "probability": float(p)} for c, p in zip(classes[row], probabilities[row])]
                    records.append({"path": path, "top_k": top})
                else:
                    reason = predictor.read.errors.get(path, "read by another process: see its log")
                    records.append({"path": path, "error": f"cannot read image: {reason}"})
                    unreadable.append(path)
                    if path in predictor.read.errors:  # this process read it
                        logging.warning("cannot read image %s: %s", path, reason)
                if primary:
                    progress.write(_line(records[-1]), file=sys.stdout)  # above the bar, on a terminal
            position += rows
            progress.update(rows)
    seconds = time.perf_counter() - start
    if primary:
        if output:
            _write(output, records, predictor.top_k)
        logging.info("predicted %d images with %s/checkpoints/%d on %s in %.1fs: %.0f images/s%s",
                     len(files) - len(unreadable), predictor.run.workdir, predictor.run.step,
                     mesh_lib.describe(predictor.mesh), seconds, (len(files) - len(unreadable)) / seconds,
                     f"; wrote {output}" if output else "")
    return unreadable


def _line(record: dict) -> str:
    if "error" in record:
        return f"{record['path']}: {record['error']}"
    return f"{record['path']}: " + ", ".join(f"{t['class']} ({t['probability']:.4f})" for t in record["top_k"])


def _write(path: str, records: list[dict], top_k: int) -> None:
    """Written to a temporary name, then renamed: a file at `path` is always complete."""
    partial = f"{path}.partial"
    with open(partial, "w", newline="") as f:
        if path.endswith(".jsonl"):
            f.writelines(json.dumps(r) + "\n" for r in records)
        else:
            writer = csv.writer(f)
            writer.writerow(["path", *(f"{field}_{k}" for k in range(1, top_k + 1) for field in ("class", "probability")),
                             "error"])
            for r in records:
                top = [v for t in r.get("top_k", []) for v in (t["class"], f"{t['probability']:.6g}")]
                writer.writerow([r["path"], *(top or [""] * 2 * top_k), r.get("error", "")])
    os.replace(partial, path)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
