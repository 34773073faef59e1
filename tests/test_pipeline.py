"""FacePipeline: one options value, the model resolved once, the same numbers as the chain it replaces."""
from __future__ import annotations

import pickle
import re
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest

from facenet_cli.models.catalogue import CATALOGUE, DEFAULT_MODEL
from facenet_cli.pipeline.face_pipeline import LIBRARY_DEFAULTS, FacePipeline, PipelineOptions, model_defaults

ROOT = Path(__file__).resolve().parents[1]


def test_options_are_frozen_and_picklable():
    from facenet_cli.choices import Detector, Upsample

    options = PipelineOptions(model=DEFAULT_MODEL, detector=Detector.cnn, upsample=Upsample.auto, flip=True,
                              fallback_dir=Path("/tmp/stand-ins"), workers=3)
    # CLI enum members and paths become plain values, so a worker or a record can carry them.
    assert options.detector == "cnn" and options.upsample == "auto" and options.fallback_dir == "/tmp/stand-ins"
    assert pickle.loads(pickle.dumps(options)) == options
    with pytest.raises(FrozenInstanceError):
        options.flip = False  # type: ignore[misc]
    with pytest.raises(Exception, match="--upsample"):
        PipelineOptions(upsample=9)


def test_unset_options_take_the_models_settings_and_set_ones_win():
    record = CATALOGUE[DEFAULT_MODEL]
    # dlib-resnet.v1's operating points were calibrated on flipped embeddings.
    assert model_defaults(record) == {"flip": True}
    filled = PipelineOptions().with_defaults(record)
    assert filled.model == DEFAULT_MODEL and filled.flip is True
    assert {name: getattr(filled, name) for name in LIBRARY_DEFAULTS if name != "flip"} == \
        {name: value for name, value in LIBRARY_DEFAULTS.items() if name != "flip"}
    chosen = PipelineOptions(flip=False, detector="cnn", batch_size=4, faces="largest").with_defaults(record)
    assert (chosen.flip, chosen.detector, chosen.batch_size, chosen.faces) == (False, "cnn", 4, "largest")
    assert chosen.upsample == "auto"  # still the default where unset
    # A model without calibrated operating points: the library's default.
    from facenet_cli.nets.nn4 import default_record

    assert PipelineOptions().with_defaults(default_record("nn4.small2")).flip is False


@pytest.fixture
def photo(lfw_images) -> Path:
    return lfw_images / "Colin_Powell" / "Colin_Powell_0001.jpg"


def test_faces_and_embed_equal_the_aligner_and_embedder_chain(photo):
    from facenet_cli.align.aligner import FaceAligner
    from facenet_cli.nets.embedder import Embedder
    from facenet_cli.models.hub import resolve_model
    from facenet_cli.images import read_rgb

    rgb = read_rgb(photo)
    record = resolve_model(DEFAULT_MODEL)
    old_faces = FaceAligner(record.align, upsample="auto", faces="all").align(rgb)
    # The pipeline's default precision is auto (the Embedder's own default stays fp32).
    old = Embedder(record, device="cpu", flip=True, precision="auto").embed([f.image for f in old_faces])

    pipeline = FacePipeline.build(PipelineOptions(device="cpu"))
    faces = pipeline.faces(rgb)
    assert len(faces) == len(old_faces) >= 1
    for new, before in zip(faces, old_faces):
        assert new.box == before.box
        assert np.array_equal(new.landmarks, before.landmarks) and np.array_equal(new.image, before.image)
    vectors = pipeline.embed([f.image for f in faces])
    assert vectors.shape == old.shape and np.allclose(vectors, old, atol=1e-6, rtol=0)
    assert pipeline.faces(np.full((160, 160, 3), 90, np.uint8)) == []  # no face: none, not an error
    # Many photos: the same faces, in order, and a photo without a face says why.
    blank = photo.parent.parent / "no-such-photo.jpg"
    found = pipeline.photos([photo, blank], workers=1, embed=True)
    assert [f.box for f in found[0].faces] == [f.box for f in faces] and found[0].problem is None
    assert np.allclose(found[0].embeddings, vectors, atol=1e-6, rtol=0)
    assert found[1].faces == [] and isinstance(found[1].problem, str) and len(found[1].embeddings) == 0


def test_the_model_is_resolved_once_and_each_part_built_once(tmp_path, photo, monkeypatch):
    import torch

    from facenet_cli.formats import checkpoints
    from facenet_cli.images import read_rgb
    from facenet_cli.nets import build_network
    from facenet_cli.nets.nn4 import default_record

    record = default_record("nn4.small2")
    torch.manual_seed(0)
    path = checkpoints.save_checkpoint(tmp_path / "tiny.pt", {
        "record": record.to_dict() | {"name": "tiny"},
        "state_dict": build_network(record, None).state_dict()})
    reads = []
    real = checkpoints.checkpoint_record
    monkeypatch.setattr(checkpoints, "checkpoint_record", lambda p: reads.append(p) or real(p))

    pipeline = FacePipeline.build(PipelineOptions(model=str(path), device="cpu", faces="largest"))
    assert pipeline.record.name == "tiny" and len(reads) == 1
    faces = pipeline.faces(read_rgb(photo))
    assert len(faces) == 1 and faces[0].image.shape == (96, 96, 3)
    vectors = pipeline.embed([faces[0].image])
    assert vectors.shape == (1, 128) and np.isclose(np.linalg.norm(vectors), 1.0)
    assert pipeline.embedder is pipeline.embedder and pipeline.aligner is pipeline.aligner
    assert pipeline.aligner_with(upsample=0) is pipeline.aligner_with(upsample="0") is not pipeline.aligner
    assert len(reads) == 1


def test_a_damaged_file_is_refused_when_the_pipeline_is_built(tmp_path):
    from facenet_cli.errors import FacenetError

    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FacenetError, match="No checkpoint file"):
        FacePipeline.build(PipelineOptions(model=str(missing)))


# FaceAligner and Embedder are made by the pipeline only (pipeline/face_pipeline.py: `make_aligner`,
# `.embedder`); their own modules define them.
MADE_ONLY_IN = {"pipeline/face_pipeline.py", "align/aligner.py", "nets/embedder.py"}


def test_aligner_and_embedder_are_built_only_by_the_pipeline():
    made = re.compile(r"(?<![\w.])(FaceAligner|Embedder)\(")
    places = []
    for path in sorted((ROOT / "facenet_cli").rglob("*.py")):
        if path.relative_to(ROOT / "facenet_cli").as_posix() in MADE_ONLY_IN:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if made.search(code) and '"""' not in line and "`" not in line:
                places.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert places == []


def test_the_model_is_resolved_only_through_the_pipeline():
    places = []
    for path in sorted((ROOT / "facenet_cli").rglob("*.py")):
        if path.relative_to(ROOT / "facenet_cli").as_posix() in {"pipeline/face_pipeline.py", "models/hub.py"}:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bresolve_model\(", line.split("#", 1)[0]):
                places.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert places == []
