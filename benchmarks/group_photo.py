"""A 12-megapixel group photo with 20 faces to 20 embeddings: ours against face_recognition's default.

    python benchmarks/group_photo.py [--repeats 3] [--seed 0] [--precision auto|fp32|bf16|int8] [--detector NAME] [--quick]

The photo: a 4000x3000 canvas, four staggered rows of five people, each an LFW deep-funneled
image scaled so that dlib's HOG box of its face is 260 px (back row) to 300 px (front row) wide,
about 1/11 of the photo's height: a group of 20 that fills a 12 Mpx frame, as a phone or a
camera takes it. Each LFW image is blended in through a soft ellipse (head and shoulders, no
square tile edges) over a background of smooth colour patches with fine sensor-like noise,
then saved as a JPEG (quality 92), the file both sides read. The people are fixed by `--seed`:
LFW's people in a seeded random order, keeping the first 20 whose first image has exactly one
face (HOG, no upsampling) covering its centre, so that a miss is the pipeline's doing, not the
source image's.

Each side runs in a fresh Python process, loads its models, and is timed from the photo file to
its embeddings (decoding included, model loading excluded and shown apart); the sides alternate
order from one repeat to the next and the figures are medians over --repeats. The CPU seconds
of the same span (all threads of the process) are shown too: on a machine shared with other
jobs they say what each side costs when wall time cannot.

- ours: the library path of `facenet compare` (and `represent --photos`, `gallery add`):
  `compare.find_faces` with `FaceAligner(spec, upsample="auto", faces="all")` and an `Embedder`
  on the CPU. It reads the photo with `FaceAligner.align_file`: the first pass searches a 2 Mpx
  copy made from libjpeg's reduced decode while a thread decodes the full photo; landmarks and
  warp at full resolution; one batch through the network.
- ours, no overlap: the same, the photo read first (`align(read_rgb(path))`), the first pass on a
  downscaled copy of the full decode.
- ours, plain: the same with the downscaled first pass off (`first_pass_pixels=0`): the whole
  photo searched at full size, as before this change.
- theirs: face_recognition's `face_encodings(load_image_file(path))` with its defaults, called on
  dlib directly as benchmarks/end_to_end.py does: HOG at upsample 1, the 5-point predictor,
  `compute_face_descriptor(img, shape, num_jitters=1)` per face.

Faces found are matched to the placed ones by position (a box whose centre lies within half a
placed face's width of that face's centre, one to one). `--quick`: a 2400x1800 canvas with six
faces (170-190 px), one repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
MODEL = "dlib-resnet.v1"
FULL = {"width": 4000, "height": 3000, "rows": 4, "per_row": 5, "box": (260, 300)}
QUICK = {"width": 2400, "height": 1800, "rows": 2, "per_row": 3, "box": (170, 190)}


# ---------------------------------------------------------------- the photo

def pick_people(count: int, seed: int):
    """(image path, HOG box of its face) for `count` LFW people in a seeded order whose first image
    has exactly one face, covering the image centre, at upsample 0."""
    import dlib
    import numpy as np
    from PIL import Image

    from _common import need_lfw

    detector = dlib.get_frontal_face_detector()
    people = sorted(p for p in need_lfw().iterdir() if p.is_dir())
    chosen = []
    for index in np.random.default_rng(seed).permutation(len(people)):
        path = sorted(people[index].glob("*.jpg"))[0]
        rgb = np.asarray(Image.open(path).convert("RGB"))
        rects = detector(rgb, 0)
        h, w = rgb.shape[:2]
        if len(rects) == 1 and rects[0].left() < w / 2 < rects[0].right() and rects[0].top() < h / 2 < rects[0].bottom():
            r = rects[0]
            chosen.append((path, (r.left(), r.top(), r.right(), r.bottom())))
            if len(chosen) == count:
                return chosen
    raise SystemExit(f"fewer than {count} usable LFW people")


def build_group_photo(width: int, height: int, rows: int, per_row: int, box: tuple[int, int], seed: int):
    """(RGB canvas, placed faces) per the module doc; each placed face: its LFW `file`, the `box`
    [l, t, r, b] of its HOG face box in the canvas, and where its image went: canvas = `origin`
    + `scale` x (LFW image coordinates)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    # Background: smooth colour patches (a room, clothes, a wall) plus fine noise.
    patches = rng.uniform(50, 210, size=(5, 7, 3)).astype(np.float32)
    canvas = cv2.resize(patches, (width, height), interpolation=cv2.INTER_CUBIC)
    canvas += rng.normal(0, 5, size=canvas.shape).astype(np.float32)
    people = pick_people(rows * per_row, seed)
    step_x, step_y = width / (per_row + 0.5), height / rows
    placed = []
    for row in range(rows):
        # Back row first (smaller faces), so the front rows overlap it, as people stand.
        target = box[0] + (box[1] - box[0]) * row / max(rows - 1, 1)
        for column in range(per_row):
            path, (l, t, r, b) = people[row * per_row + column]
            source = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32)
            scale = target * rng.uniform(0.97, 1.03) / (r - l)
            side = int(round(source.shape[0] * scale))
            tile = cv2.resize(source, (side, side), interpolation=cv2.INTER_CUBIC)
            # Where the face centre goes: a staggered grid, a little jitter.
            cx = step_x * (column + 0.5 + 0.5 * (row % 2)) + rng.uniform(-0.05, 0.05) * step_x
            cy = step_y * (row + 0.5) + rng.uniform(-0.05, 0.05) * step_y
            fcx, fcy = (l + r) / 2 * scale, (t + b) / 2 * scale
            x0, y0 = int(round(cx - fcx)), int(round(cy - fcy))
            mask = np.zeros((side, side), np.float32)
            cv2.ellipse(mask, (side // 2, side // 2), (int(side * 0.40), int(side * 0.48)), 0, 0, 360, 1.0, -1)
            mask = cv2.GaussianBlur(mask, (0, 0), side * 0.03)[:, :, None]
            # Clip the tile to the canvas.
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
            region = (slice(cy0, cy1), slice(cx0, cx1))
            part = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
            canvas[region] = canvas[region] * (1 - mask[part]) + tile[part] * mask[part]
            placed.append({"file": f"{path.parent.name}/{path.name}", "scale": scale, "origin": [x0, y0],
                           "box": [x0 + l * scale, y0 + t * scale, x0 + r * scale, y0 + b * scale]})
    return np.clip(canvas, 0, 255).astype(np.uint8), placed


def matched_faces(found: list[list[float]], placed: list[dict]) -> set[int]:
    """The placed faces (their indices) that have a found box whose centre lies within half the
    placed face's width of its centre: the nearest such box, each found box used once."""
    used, matched = set(), set()
    for k, face in enumerate(placed):
        l, t, r, b = face["box"]
        cx, cy, limit = (l + r) / 2, (t + b) / 2, (r - l) / 2
        best = None
        for i, (fl, ft, fr, fb) in enumerate(found):
            d = (((fl + fr) / 2 - cx) ** 2 + ((ft + fb) / 2 - cy) ** 2) ** 0.5
            if i not in used and d <= limit and (best is None or d < best[0]):
                best = (d, i)
        if best is not None:
            used.add(best[1])
            matched.add(k)
    return matched


def match_by_position(found: list[list[float]], placed: list[dict]) -> int:
    """How many placed faces were found (matched_faces)."""
    return len(matched_faces(found, placed))


# ---------------------------------------------------------------- the sides (each in its own process)

def run_ours(photo: Path, first_pass: bool, precision: str = "auto", read_first: bool = False,
             detector: str | None = None) -> dict:
    import numpy as np

    from facenet_cli.images import read_rgb
    from facenet_cli.pipeline.face_pipeline import FacePipeline, PipelineOptions
    from facenet_cli.recognition.compare import find_faces

    threads = int(os.environ.get("GROUP_TORCH_THREADS", "0"))
    if threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pipeline = FacePipeline.build(PipelineOptions(model=MODEL, device="cpu", engine="torch", precision=precision,
                                                  flip=False, upsample="auto", faces="all", detector=detector))
    embedder = pipeline.embedder
    aligner = pipeline.aligner_with(first_pass_pixels=None if first_pass else 0)
    pipeline._aligner = aligner  # find_faces uses the pipeline's aligner: this one, with or without the first pass
    embedder.embed([np.zeros((150, 150, 3), np.uint8)] * 20)  # first batch: oneDNN's kernels built
    t1, c1 = time.perf_counter(), time.process_time()
    if read_first:
        # find_faces as it was before it called align_file: align(read_rgb(path)).
        found = aligner.align(read_rgb(photo))
        vectors = embedder.embed([f.image for f in found])
        faces = [SimpleNamespace(box=f.box, embedding=v) for f, v in zip(found, vectors)]
        problems = {}
    else:
        faces, problems = find_faces([photo], pipeline, workers=1)
    t2, c2 = time.perf_counter(), time.process_time()
    import torch

    return {"load": t1 - t0, "seconds": t2 - t1, "cpu": c2 - c1, "faces": len(faces), "problems": problems,
            "boxes": [[f.box.left, f.box.top, f.box.right, f.box.bottom] for f in faces],
            "vectors": [f.embedding.tolist() for f in faces], "first_pass": aligner.first_pass,
            "threads": torch.get_num_threads()}


def run_theirs(photo: Path) -> dict:
    import dlib
    import numpy as np
    from PIL import Image

    from facenet_cli.models import resources

    t0 = time.perf_counter()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(resources.dlib_model_path(resources.SHAPE_PREDICTOR_5)))
    encoder = dlib.face_recognition_model_v1(str(resources.dlib_model_path(resources.DLIB_RESNET)))
    t1, c1 = time.perf_counter(), time.process_time()
    img = np.array(Image.open(photo).convert("RGB"))        # load_image_file(mode="RGB")
    rects = detector(img, 1)                                 # _raw_face_locations(img, 1, "hog")
    shapes = [predictor(img, rect) for rect in rects]        # model="small": 5-point
    vectors = [np.array(encoder.compute_face_descriptor(img, shape, 1)) for shape in shapes]
    t2, c2 = time.perf_counter(), time.process_time()
    return {"load": t1 - t0, "seconds": t2 - t1, "cpu": c2 - c1, "faces": len(vectors),
            "boxes": [[r.left(), r.top(), r.right(), r.bottom()] for r in rects],
            "vectors": [v.tolist() for v in vectors]}


def child(side: str, photo: Path, precision: str, detector: str) -> None:
    if side == "theirs":
        result = run_theirs(photo)
    else:
        result = run_ours(photo, side != "ours-plain", precision, read_first=side == "ours-read", detector=detector)
    print("RESULT " + json.dumps(result))


def launch(side: str, photo: Path, precision: str, detector: str) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--side", side, "--photo", str(photo), "--precision", precision,
                           "--detector", detector],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stdout}\n{proc.stderr}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["wall"] = time.perf_counter() - start
    return result


def agreement(ours: dict, theirs: dict) -> tuple[int, float]:
    """Faces both found at the same place: count and the smallest cosine between the two vectors."""
    import numpy as np

    cosines = []
    for box, vector in zip(ours["boxes"], ours["vectors"]):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        for tbox, tvector in zip(theirs["boxes"], theirs["vectors"]):
            if abs((tbox[0] + tbox[2]) / 2 - cx) < (box[2] - box[0]) / 2 and abs((tbox[1] + tbox[3]) / 2 - cy) < (box[3] - box[1]) / 2:
                a, b = np.asarray(vector), np.asarray(tvector)
                cosines.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
                break
    return len(cosines), (min(cosines) if cosines else float("nan"))


def main() -> None:
    from facenet_cli.detect import detector_names
    from facenet_cli.pipeline.face_pipeline import LIBRARY_DEFAULTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a 2400x1800 photo with 6 faces, one repeat")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), default="auto",
                        help="our embedder's precision (both of our sides); default: auto, the CLI's default")
    parser.add_argument("--detector", choices=detector_names(builtin_only=True), default=LIBRARY_DEFAULTS["detector"],
                        help="our detector (all of our sides; default: the CLI's)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch threads for our sides (default: torch's own, one per core); on a machine "
                             "shared with other jobs, OpenMP's spinning makes 2 threads slower than 1")
    parser.add_argument("--side", choices=("ours", "ours-read", "ours-plain", "theirs"), help=argparse.SUPPRESS)
    parser.add_argument("--photo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        child(args.side, args.photo, args.precision, args.detector)
        return
    sys.path.insert(0, str(HERE))
    from statistics import median

    import cv2

    shape = QUICK if args.quick else FULL
    repeats = 1 if args.quick else args.repeats
    work = Path(tempfile.mkdtemp(prefix="facenet-group-"))
    canvas, placed = build_group_photo(seed=args.seed, **shape)
    if args.torch_threads:
        os.environ["GROUP_TORCH_THREADS"] = str(args.torch_threads)
    photo = work / "group.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    widths = [f["box"][2] - f["box"][0] for f in placed]
    print(f"photo: {shape['width']}x{shape['height']} ({shape['width'] * shape['height'] / 1e6:.1f} Mpx), "
          f"{len(placed)} LFW faces placed, HOG box {min(widths):.0f}-{max(widths):.0f} px, seed {args.seed}")
    load_before = os.getloadavg()
    sides = ("ours", "ours-read", "ours-plain", "theirs")
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for repeat in range(repeats):
        for side in (sides if repeat % 2 == 0 else sides[::-1]):
            runs[side].append(launch(side, photo, args.precision, args.detector))
            r = runs[side][-1]
            print(f"  repeat {repeat + 1} {side:10}: {r['seconds']:.3f} s, {r['faces']} faces "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    load_after = os.getloadavg()
    photo.unlink()
    work.rmdir()

    seconds = {s: median(r["seconds"] for r in runs[s]) for s in sides}
    print(f"\n{len(placed)}-face {shape['width']}x{shape['height']} photo -> {MODEL} embeddings, one process "
          f"per side, median of {repeats}; {os.cpu_count()} CPUs, ours with torch's {runs['ours'][-1]['threads']} threads, "
          f"precision {args.precision}, detector {args.detector}")
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    cpu = {s: median(r["cpu"] for r in runs[s]) for s in sides}
    print(f"{'':44} {'seconds':>8} {'load s':>7} {'faces':>6} {'matched':>8} {'CPU s':>7}")
    labels = {"ours": "ours (compare path, --faces all)", "ours-read": "ours, no overlap (align(read_rgb))",
              "ours-plain": "ours, plain (no downscaled first pass)",
              "theirs": "theirs (face_recognition defaults)"}
    for side in sides:
        r = runs[side][-1]
        print(f"{labels[side]:44} {seconds[side]:8.3f} {median(x['load'] for x in runs[side]):7.2f} "
              f"{r['faces']:6d} {match_by_position(r['boxes'], placed):8d} {cpu[side]:7.3f}")
    print(f"ratio ours / theirs: {seconds['theirs'] / seconds['ours']:.2f}x (target >= 30x)")
    print(f"CPU time ratio (all threads; robust to other jobs' load): ours {cpu['theirs'] / cpu['ours']:.2f}x, "
          f"no overlap {cpu['theirs'] / cpu['ours-read']:.2f}x, plain {cpu['theirs'] / cpu['ours-plain']:.2f}x")
    print(f"ratio ours no overlap / theirs: {seconds['theirs'] / seconds['ours-read']:.2f}x")
    print(f"ratio ours plain / theirs: {seconds['theirs'] / seconds['ours-plain']:.2f}x")
    print(f"ours, downscaled first pass: {runs['ours'][-1]['first_pass']}")
    both, low = agreement(runs["ours"][-1], runs["theirs"][-1])
    print(f"agreement on {both} faces both found (ours vs theirs, same place): cosine min {low:.4f}")


if __name__ == "__main__":
    main()
