"""The model catalogue: one record per pretrained model.

A record names its network, where its weights come from (with checksum), the alignment its
input needs, the embedding size, the distance threshold and the LFW accuracy we measured.
Adding a model is adding a record to `CATALOGUE`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .align_specs import AlignSpec, get_spec
from .errors import UnknownModel


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
    # with where it was chosen and the curve it came from; see facenet_cli/identify.py.
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


CATALOGUE: dict[str, ModelRecord] = {}


def register(record: ModelRecord) -> ModelRecord:
    if record.name in CATALOGUE:
        raise ValueError(f"model {record.name!r} registered twice")
    CATALOGUE[record.name] = record
    return record


from .choices import DEFAULT_MODEL  # noqa: E402 (one home, light enough for the CLI's --help)

# Operating points of dlib-resnet.v1 beyond the pair threshold: identification (the unknown
# gate) and clustering, calibrated on people disjoint from those they are measured on, by the
# benchmark scripts the README names.
DLIB_IDENTIFY_POINTS: dict[str, Any] = {}
DLIB_CLUSTER_POINTS: dict[str, Any] = {}

register(ModelRecord(
    name="dlib-resnet.v1",
    architecture="dlib-resnet",
    align=get_spec("dlib-chip"),
    embedding_dim=128,
    weights=WeightsSource(
        filename="dlib_face_recognition_resnet_model_v1.dat",
        sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        package="face-recognition-models",
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


def get_record(name: str) -> ModelRecord:
    if name not in CATALOGUE:
        raise UnknownModel(
            f"Unknown model {name!r}; choose one of {', '.join(list_models())} or give a checkpoint path."
        )
    return CATALOGUE[name]
