"""The model catalogue: one record per file the engine loads, each with its SHA-256.

Two kinds of record share one weights description (`WeightsSource`):

* `ModelRecord`, one per embedding model (`--model NAME`): its network, weights, the alignment
  its input needs, the embedding size, the distance threshold and the LFW accuracy we measured.
* `ModelFile`, one per support file: dlib's landmark predictors and its CNN face detector.

Every file is verified against its record before it is loaded (facenet_cli/models/hub.py), and
`facenet fetch-models` lists all of them with their status. Adding a model is adding a
`ModelRecord` to `CATALOGUE`; adding a support file is adding a `ModelFile` to `MODEL_FILES`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..align.specs import AlignSpec, get_spec
from ..errors import UnknownModel


@dataclass(frozen=True)
class WeightsSource:
    """Where a weights file comes from. Exactly one of `package`, `url`, `path` is set."""

    filename: str
    sha256: str
    package: str | None = None  # a pip distribution that ships `filename`
    url: str | None = None  # downloaded into the cache
    path: str | None = None  # a local file (checkpoints)
    size: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelRecord:
    name: str
    architecture: str  # key of facenet_cli.nets.ARCHITECTURES
    align: AlignSpec
    embedding_dim: int
    weights: WeightsSource | None
    # Squared L2 distance on the unit sphere under which two faces are called the same person.
    threshold: float
    description: str = ""
    # Subtracted from the raw embedding before L2 normalisation (spreads a model whose raw
    # vectors sit in a small cap of the sphere); None = plain normalisation.
    center: tuple[float, ...] | None = None
    # Our own measured figures, e.g. {"view2_accuracy": 0.99, "view2_std": 0.003, "command": "..."}
    lfw: dict[str, Any] = field(default_factory=dict)
    # Calibrated operating points beyond the pair threshold (identification, clustering), each
    # with where it was chosen and the curve it came from; see facenet_cli/recognition/identify.py.
    operating_points: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "architecture": self.architecture,
            "align": self.align.to_dict(),
            "embedding_dim": self.embedding_dim,
            "weights": self.weights.to_dict() if self.weights else None,
            "threshold": self.threshold,
            "description": self.description,
            "center": list(self.center) if self.center is not None else None,
            "lfw": dict(self.lfw),
            "operating_points": dict(self.operating_points),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelRecord":
        w = d.get("weights")
        return cls(
            name=d["name"],
            architecture=d["architecture"],
            align=AlignSpec.from_dict(d["align"]),
            embedding_dim=int(d["embedding_dim"]),
            weights=WeightsSource(**w) if w else None,
            threshold=float(d["threshold"]),
            description=d.get("description", ""),
            center=tuple(d["center"]) if d.get("center") is not None else None,
            lfw=dict(d.get("lfw", {})),
            operating_points=dict(d.get("operating_points", {})),
        )


@dataclass(frozen=True)
class ModelFile:
    """A support file the engine loads besides an embedding network (landmarks, a detector)."""

    name: str  # what `facenet fetch-models NAME` calls it
    kind: str  # one of FILE_KINDS
    weights: WeightsSource
    description: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "weights": self.weights.to_dict(),
                "description": self.description}


FILE_KINDS = ("embedding", "landmarks", "detector")

CATALOGUE: dict[str, ModelRecord] = {}
MODEL_FILES: dict[str, ModelFile] = {}


def register(record: ModelRecord) -> ModelRecord:
    if record.name in CATALOGUE:
        raise ValueError(f"model {record.name!r} registered twice")
    CATALOGUE[record.name] = record
    return record


def register_file(entry: ModelFile) -> ModelFile:
    if entry.kind not in FILE_KINDS:
        raise ValueError(f"model file {entry.name!r} has kind {entry.kind!r}, not one of {FILE_KINDS}")
    if entry.name in MODEL_FILES or entry.name in CATALOGUE:
        raise ValueError(f"model file {entry.name!r} registered twice")
    MODEL_FILES[entry.name] = entry
    return entry


# dlib's files, shipped by the `face-recognition-models` wheel (found through its metadata,
# never imported). $FACENET_DLIB_MODELS names another folder holding them (see hub.py).
DLIB_PACKAGE = "face-recognition-models"

register_file(ModelFile(
    name="dlib-landmarks-68", kind="landmarks",
    weights=WeightsSource(filename="shape_predictor_68_face_landmarks.dat",
                          sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
                          package=DLIB_PACKAGE, size=99693937),
    description="dlib's 68-point landmark predictor (OpenFace alignments, dlib-chip68).",
))
register_file(ModelFile(
    name="dlib-landmarks-5", kind="landmarks",
    weights=WeightsSource(filename="shape_predictor_5_face_landmarks.dat",
                          sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
                          package=DLIB_PACKAGE, size=9150489),
    description="dlib's 5-point landmark predictor (the dlib-chip alignment).",
))
register_file(ModelFile(
    name="dlib-cnn-detector", kind="detector",
    weights=WeightsSource(filename="mmod_human_face_detector.dat",
                          sha256="4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
                          package=DLIB_PACKAGE, size=729940),
    description="dlib's CNN (MMOD) face detector (--detector cnn, hog+cnn).",
))

# MTCNN's three networks (--detector mtcnn), shipped by the `mtcnn` wheel (MIT) as joblib
# pickles: verified against these digests before they are unpickled (facenet_cli/nets/mtcnn.py).
MTCNN_PACKAGE = "mtcnn"
for _net, _sha, _size in (("pnet", "ea6b0c3e685ebee3165326ad6484acc95f2ef78f1c94fbf40a55704fa989f7b5", 27119),
                          ("rnet", "cb00e6460f3c98b0bfafaba3c0a0ded4bdf6e62cee7174d969e8670d7e757fee", 401659),
                          ("onet", "94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3", 1557637)):
    register_file(ModelFile(
        name=f"mtcnn-{_net}", kind="detector",
        weights=WeightsSource(filename=f"{_net}.lz4", sha256=_sha, package=MTCNN_PACKAGE, size=_size),
        description=f"MTCNN's {_net[0].upper()}-net (--detector mtcnn), from the mtcnn 1.0.0 wheel.",
    ))
del _net, _sha, _size

from ..choices import DEFAULT_MODEL  # noqa: E402 (one home, light enough for the CLI's --help)

# Operating points of dlib-resnet.v1 beyond the pair threshold: identification (the unknown
# gate) and clustering, calibrated on people disjoint from those they are measured on, by the
# benchmark scripts the README names.
DLIB_IDENTIFY_POINTS: dict[str, Any] = {
    "method": "mean",
    # The flip the embeddings below were made with: a pipeline left to its defaults uses it.
    "flip": True,
    "gate": {"basis": "mean", "margin": 0.5, "spread": 0.25},
    "default_far": 0.01,
    "curve": {
        "sizes": [10, 158, 1000],
        "fars": [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3],
        # gate thresholds, one row per gallery size, one column per FAR
        "thresholds": [
            [-0.02896, -0.01145, 0.01063, 0.03205, 0.05686, 0.08043, 0.10936, 0.1427],
            [-0.02747, -0.00444, 0.0196, 0.03482, 0.05066, 0.06696, 0.08559, 0.1062],
            [-0.04225, -0.03116, 0.01357, 0.0353, 0.04654, 0.05852, 0.07394, 0.09114],
        ],
    },
    "calibrated_on": ("LFW peopleDevTrain.txt people only (4,038 people): galleries of 10, 158 and 1,000 of them "
                      "(up to 5 images each, several random draws), strangers = all their other images"),
    "embeddings": ("dlib-resnet.v1 --flip, View 2 pipeline (align --faces center-only --detector hog+cnn "
                   "--fallback center)"),
    "command": "python benchmarks/identify_lfw.py --calibrate",
    # The stranger cohort that sets the gate per gallery (recognition/calibration.py); the curve
    # above is then the fallback. The file ships in facenet_cli/models/cohorts/, checked against
    # this SHA-256 before it is read.
    "cohort": {
        "filename": "dlib-resnet.v1-strangers.npy",
        "sha256": "b88ac0b1a29b67234f97e03d1c098a7602679d06cc6277efee374607410abb76",
        "size": 696192,
        "faces": 2719,
        "flip": True,
        "people": ("LFW: every second person with fewer than 6 images, sorted by name (2,719 people, their first "
                   "image); no gallery or stranger of benchmarks/gallery_calibration.py is among them"),
        "embeddings": ("dlib-resnet.v1 --flip, View 2 pipeline (align --faces center-only --detector hog+cnn "
                       "--fallback center), stored as float16"),
        "command": "python benchmarks/gallery_calibration.py --make-cohort",
    },
}
DLIB_CLUSTER_POINTS: dict[str, Any] = {
    # `facenet cluster`: average linkage over each face's 32 nearest neighbours, merging while the
    # mean squared distance between two clusters is <= threshold. Chosen as the best pairwise F
    # on the faces of peopleDevTrain.txt alone, then fixed and measured on all of LFW
    # (benchmarks/cluster_lfw.py, View 2 embeddings with --flip).
    "threshold": 0.13,
    "flip": True,
    "algorithm": "average-linkage-knn",
    "k": 32,
    "chosen_on": "best pairwise F on peopleDevTrain.txt's 4,038 people (9,525 faces)",
    # [threshold, pairwise precision, recall, F] on those people.
    "curve": [
        [0.09, 0.9994, 0.5626, 0.7200], [0.10, 0.9986, 0.7350, 0.8468], [0.11, 0.9962, 0.8331, 0.9074],
        [0.115, 0.9957, 0.9211, 0.9569], [0.12, 0.9945, 0.9269, 0.9595], [0.125, 0.9915, 0.9759, 0.9836],
        [0.13, 0.9869, 0.9833, 0.9851], [0.135, 0.9833, 0.9853, 0.9843], [0.14, 0.9754, 0.9865, 0.9809],
        [0.15, 0.9535, 0.9907, 0.9717], [0.16, 0.9274, 0.9915, 0.9584], [0.17, 0.8597, 0.9921, 0.9212],
    ],
    "command": "python benchmarks/cluster_lfw.py",
}

register(ModelRecord(
    name="dlib-resnet.v1",
    architecture="dlib-resnet",
    align=get_spec("dlib-chip"),
    embedding_dim=128,
    weights=WeightsSource(
        filename="dlib_face_recognition_resnet_model_v1.dat",
        sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        package=DLIB_PACKAGE,
        size=22466066,
    ),
    # Chosen on LFW View 1's pairsDevTrain (benchmarks/lfw_levers.py); View 2's ten fold
    # thresholds all came out at 0.186. Plain unit vectors: subtracting a mean embedding spreads
    # them over the sphere but cost 0.4 points on View 1, so the record keeps center=None.
    threshold=0.182,
    description="dlib's 128-d ResNet (29 conv layers), read from its .dat file into PyTorch.",
    lfw={
        "view2_accuracy": 0.9895, "view2_std": 0.0034, "view2_auc": 0.9994,
        "view2_accuracy_flip": 0.9902, "view2_std_flip": 0.0028, "view2_auc_flip": 0.9995,
        "pipeline": "facenet align --faces center-only --detector hog+cnn --fallback center; facenet represent",
        "command": "python benchmarks/lfw_view2.py [--flip]",
    },
    operating_points={"identify": DLIB_IDENTIFY_POINTS, "cluster": DLIB_CLUSTER_POINTS},
))


def list_models() -> list[str]:
    return sorted(CATALOGUE)


def kind_of(entry: "ModelRecord | ModelFile") -> str:
    return entry.kind if isinstance(entry, ModelFile) else "embedding"


def all_files() -> list["ModelRecord | ModelFile"]:
    """Every catalogued file the engine may load: the models' weights, then the support files."""
    return [CATALOGUE[n] for n in list_models()] + [MODEL_FILES[n] for n in sorted(MODEL_FILES)]


def get_entry(name: str) -> "ModelRecord | ModelFile":
    """A model or a support file by its catalogue name (what `facenet fetch-models NAME` takes)."""
    if name in MODEL_FILES:
        return MODEL_FILES[name]
    if name not in CATALOGUE:
        raise UnknownModel(
            f"Unknown model {name!r}; choose one of {', '.join(list_models() + sorted(MODEL_FILES))}.")
    return CATALOGUE[name]


def file_entry(filename: str) -> "ModelRecord | ModelFile":
    """The catalogue entry whose weights file is called `filename` (e.g. shape_predictor_5_face_landmarks.dat)."""
    for entry in all_files():
        if entry.weights is not None and entry.weights.filename == filename:
            return entry
    raise UnknownModel(f"{filename} is not a catalogued model file; add a ModelFile record for it in catalogue.py.")


def get_record(name: str) -> ModelRecord:
    if name not in CATALOGUE:
        raise UnknownModel(
            f"Unknown model {name!r}; choose one of {', '.join(list_models())} or give a checkpoint path."
        )
    return CATALOGUE[name]
