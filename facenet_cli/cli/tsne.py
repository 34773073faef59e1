"""`facenet tsne`: a 2-D t-SNE map of some people's faces."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..tsne import tsne_map
from ._app import command, console


@command
def tsne_command(
    reps: Annotated[Path, typer.Argument(help="Representation folder (labels.csv with reps.npy or reps.csv).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for tsne.png, tsne.pdf and tsne.csv.")],
    names: Annotated[Optional[list[str]], typer.Option(
        help="People to map (image folder names); repeat the option or separate names with commas.")] = None,
    top: Annotated[Optional[int], typer.Option(help="Map the K people with the most faces instead of --names.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same map.")] = 0,
) -> None:
    """Map faces to 2-D with PCA then t-SNE, one colour per person.

    Example: facenet tsne reps/ --names George_W_Bush,Colin_Powell,Tony_Blair --out tsne
    """
    people = [n for value in names or [] for n in value.split(",")]
    result = tsne_map(reps, out, names=people or None, top=top, seed=seed)
    console.print(f"Mapped {len(result.people)} faces of {len(set(result.people))} people; "
                  f"see {result.files['png']} and {result.files['pdf']}.")
