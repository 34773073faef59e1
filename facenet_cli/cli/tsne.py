"""`facenet tsne REPS OUT`: a 2-D t-SNE map of some people's faces."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from ._app import JsonOption, command, console, print_json


# `--names A B C`: Typer options take one value each, so the names after the first arrive
# as extra arguments; the context collects them.
@command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def tsne_command(
    ctx: typer.Context,
    reps: Annotated[Path, typer.Argument(help="Representation folder (labels.csv with reps.npy or reps.csv).")],
    out: Annotated[Path, typer.Argument(help="Output folder: tsne.png, tsne.pdf and tsne.csv.")],
    names: Annotated[Optional[list[str]], typer.Option(
        help="People to map (image folder names): --names A B C, --names A,B,C or the option repeated.")] = None,
    top: Annotated[Optional[int], typer.Option(min=1, help="Map the K people with the most faces instead of --names.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same map.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Map faces to 2-D with PCA then t-SNE, one colour per person.

    Example: facenet tsne reps/ tsne/ --names George_W_Bush Colin_Powell Tony_Blair
    """
    if ctx.args and not names:
        raise UsageError(f"Unexpected arguments {' '.join(ctx.args)}; put people's names after --names.")
    from ..evaluate.tsne import tsne_map

    people = [n for value in [*(names or []), *ctx.args] for n in value.split(",") if n]
    result = tsne_map(reps, out, names=people or None, top=top, seed=seed)
    if as_json:
        counts: dict[str, int] = {}
        for person in result.people:
            counts[person] = counts.get(person, 0) + 1
        print_json({"faces": len(result.people), "people": counts, "seed": seed, "files": result.files})
        return
    console.print(f"Mapped {len(result.people)} faces of {len(set(result.people))} people; "
                  f"see {result.files['png']} and {result.files['pdf']}.", markup=False, highlight=False)
