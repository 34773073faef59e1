"""`facenet lfw-roc REPS PAIRS OUT`: accuracy, ROC, VAL@FAR and EER of a representation folder on LFW."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ._app import JsonOption, command, console, print_json

if TYPE_CHECKING:
    from ..evaluate.verification import LfwResult


@command
def lfw_roc_command(
    reps: Annotated[Path, typer.Argument(help="Representation folder (labels.csv with reps.npy or reps.csv).")],
    pairs: Annotated[Path, typer.Argument(help="LFW pairs.txt (View 2, 10 folds) or pairsDevTest.txt (View 1, with --train-pairs).")],
    out: Annotated[Path, typer.Argument(help="Output folder: accuracies.txt, roc.csv, roc.png, roc.pdf, result.json.")],
    comparisons: Annotated[Optional[Path], typer.Option(help="Folder of published ROC curves (LFW's comparisons/) to plot beside ours.")] = None,
    train_pairs: Annotated[Optional[Path], typer.Option(help="View 1: choose the threshold on these pairs (pairsDevTrain.txt).")] = None,
    fail_on_missing: Annotated[bool, typer.Option(help="Stop when a pair's image has no embedding instead of counting the pair as wrong.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Measure face verification on LFW with OpenFace's protocol and plot the ROC.

    A pair whose image has no embedding (no face found, or a person without any face) counts
    as a wrong answer and is reported; a folder missing most of the pairs' images is refused.

    Example: facenet lfw-roc reps/ lfw/pairs.txt lfw-eval/ --comparisons lfw/comparisons
    """
    from ..evaluate.report import evaluate_lfw

    result = evaluate_lfw(reps, pairs, out, comparisons=comparisons, dev_train=train_pairs,
                          on_missing="fail" if fail_on_missing else "wrong")
    if as_json:
        print_json(result.to_dict())
    else:
        print_result(result)


def print_result(result: "LfwResult") -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"LFW, {result.protocol}: {result.pairs} pairs")
    for name in ("fold", "threshold", "accuracy", "AUC", "VAL", "missing"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in result.folds:
        table.add_row(str(r.fold), f"{r.threshold:.4f}", f"{r.accuracy:.4f}", f"{r.auc:.4f}",
                      f"{r.val:.4f}", str(r.missing_pairs))
    table.add_section()
    table.add_row(Text("mean", style="bold"), "", Text(f"{result.accuracy_mean:.4f} ± {result.accuracy_std:.4f}",
                                                       style="bold"),
                  Text(f"{result.auc:.4f}", style="bold"), f"{result.val_mean:.4f} ± {result.val_std:.4f}",
                  str(result.missing_pairs))
    console.print(table)
    console.print(f"VAL is the true accept rate at the threshold giving FAR <= {result.far_target:g} on the training "
                  f"pairs (measured FAR {result.far_mean:.4f}); equal error rate {result.eer:.4f}.")
    if result.missing_pairs:
        console.print(Text(f"{result.missing_pairs} pairs counted as wrong: {len(result.missing_images)} of their "
                           f"images have no embedding (e.g. {result.missing_images[0]}).", style="yellow"))
    if result.missing_people:
        count = len(result.missing_people)
        console.print(Text(f"{count} {'person has' if count == 1 else 'people have'} no embedding at all (e.g. "
                           f"{result.missing_people[0]}); their pairs are among those counted as wrong.",
                           style="yellow"))
    console.print(f"Files are in {Path(result.files['result']).parent}.")
