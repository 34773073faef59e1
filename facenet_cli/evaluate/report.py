"""The LFW benchmark as files: `evaluate_lfw` measures a representation folder on a pairs file and
writes accuracies.txt (OpenFace's format), roc.csv, roc.png, roc.pdf and result.json, each
atomically (a killed or failed run never leaves half a file under the real name).
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..atomic import atomic_open, write_json_atomic, write_text_atomic
from ..errors import UsageError
from .lfw import pair_distances, processed_people, read_comparisons, read_pairs
from ..formats.reps import Reps, read_reps
from .verification import FAR_TARGET, LfwResult, evaluate_distances

OUTPUT_FILES = {"accuracies": "accuracies.txt", "roc_csv": "roc.csv", "roc_png": "roc.png",
                "roc_pdf": "roc.pdf", "result": "result.json"}


def model_label(meta: dict) -> str:
    """A short legend label from a reps folder's meta.json: the model's name (+ flip)."""
    model = meta.get("model")
    name = model.get("name", "this model") if isinstance(model, dict) else str(model or "this model")
    return name + (" + flip" if meta.get("flip") else "")


def evaluate_lfw(reps, pairs_file, out_dir, comparisons=None, dev_train=None, on_missing: str = "wrong",
                 far_target: float = FAR_TARGET, label: str | None = None) -> LfwResult:
    """Measure a representation folder (or `Reps`) on LFW and write accuracies.txt, roc.csv,
    roc.png, roc.pdf and result.json into `out_dir`.

    With `pairs.txt` (View 2) it runs OpenFace's 10-fold protocol; with View 1 pass
    `pairs_file=pairsDevTest.txt, dev_train=pairsDevTrain.txt`. Everything is read and checked
    before the first file is written.
    """
    from .plots import plot_roc  # matplotlib only when writing

    if not isinstance(reps, Reps):
        reps = read_reps(reps)
    pairs = read_pairs(pairs_file)
    if dev_train is None and pairs.view == 1:
        raise UsageError(f"{pairs.path.name} is a View 1 file with no folds; give its training pairs "
                         "(pairsDevTrain.txt) too, or use View 2's pairs.txt.")
    processed = processed_people(reps)
    train = pair_distances(read_pairs(dev_train), reps, on_missing, processed) if dev_train is not None else None
    test = pair_distances(pairs, reps, on_missing, processed)
    curves = read_comparisons(comparisons) if comparisons is not None else []
    result = evaluate_distances(test, pairs.fold, train, far_target, label or model_label(reps.meta))

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"The output {out} is a file; give a folder for the LFW results.")
    files = {key: out / name for key, name in OUTPUT_FILES.items()}
    result.files = {k: str(v) for k, v in files.items()}
    write_text_atomic(files["accuracies"], accuracies_text(result))
    write_roc_csv(result, files["roc_csv"])
    plot_roc(result, curves, [files["roc_png"], files["roc_pdf"]])
    write_json_atomic(files["result"], result.to_dict())  # last: its presence means the rest is there
    return result


def accuracies_text(result: LfwResult) -> str:
    """OpenFace's accuracies.txt: `fold, threshold, accuracy` rows, then `avg, mean +/- std`."""
    lines = ["fold, threshold, accuracy"]
    lines += [f"{r.fold}, {r.threshold:0.4f}, {r.accuracy:0.4f}" for r in result.folds]
    lines += ["", f"avg, {result.accuracy_mean:0.4f} +/- {result.accuracy_std:0.4f}"]
    return "\n".join(lines) + "\n"



def write_roc_csv(result: LfwResult, path: Path) -> None:
    """Rows `curve,threshold,fpr,tpr`: each fold's curve (curve = fold number), then `mean`."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["curve", "threshold", "fpr", "tpr"])
        for r, roc in zip(result.folds, result.fold_rocs):
            for t, f, p in zip(roc.threshold, roc.fpr, roc.tpr):
                out.writerow([r.fold, f"{t:.6g}", f"{f:.6g}", f"{p:.6g}"])
        for f, p in zip(result.mean_fpr, result.mean_tpr):
            out.writerow(["mean", "", f"{f:.6g}", f"{p:.6g}"])
