"""Every registered model agrees with its record: it builds, verifies and gives unit vectors of its size."""
from __future__ import annotations

import numpy as np
import pytest

import facenet_cli
from facenet_cli.align.specs import SPECS
from facenet_cli.models.catalogue import CATALOGUE, ModelRecord, list_models
from facenet_cli.nets.embedder import Embedder
from facenet_cli.models.hub import status


def test_public_api_names_resolve_to_their_modules_objects():
    import importlib

    for name, module in facenet_cli._EXPORTS.items():
        assert getattr(facenet_cli, name) is getattr(importlib.import_module(f"facenet_cli.{module}"), name), name


@pytest.mark.parametrize("name", list_models())
def test_record_is_complete_and_round_trips(name):
    record = CATALOGUE[name]
    assert record.align.name in SPECS and record.align == SPECS[record.align.name]
    assert record.embedding_dim > 0 and 0 < record.threshold < 4
    assert record.weights is not None and len(record.weights.sha256) == 64
    assert record.lfw.get("view2_accuracy"), "a catalogue model states the LFW accuracy we measured"
    assert ModelRecord.from_dict(record.to_dict()) == record
    if record.center is not None:
        assert len(record.center) == record.embedding_dim


@pytest.mark.parametrize("name", [n for n in list_models() if CATALOGUE[n].weights.package])
def test_model_builds_and_embeds_to_its_dimension(name):
    record = CATALOGUE[name]
    assert status(record).state == "present"
    embedder = Embedder(record, device="cpu")
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (record.align.size, record.align.size, 3), dtype=np.uint8) for _ in range(2)]
    vectors = embedder.embed(crops)
    assert vectors.shape == (2, record.embedding_dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# --- support files: every file the engine loads is a record with a checksum -------------------

def test_every_dlib_file_the_engine_loads_is_catalogued_with_its_checksum():
    from facenet_cli.models import resources
    from facenet_cli.models.catalogue import MODEL_FILES, all_files, file_entry

    loaded = [resources.SHAPE_PREDICTOR_68, resources.SHAPE_PREDICTOR_5, resources.CNN_FACE_DETECTOR,
              resources.DLIB_RESNET]
    for filename in loaded:
        entry = file_entry(filename)
        assert len(entry.weights.sha256) == 64
        path = resources.dlib_model_path(filename)  # verified before it is handed out
        assert path.name == filename and path.stat().st_size == entry.weights.size
        assert status(entry).state == "present"
    assert {e.kind for e in MODEL_FILES.values()} == {"landmarks", "detector"}
    assert [e.name for e in all_files()][: len(CATALOGUE)] == list_models()


def test_align_verifies_exactly_the_files_its_aligner_loads():
    from facenet_cli.models import resources
    from facenet_cli.align.specs import get_spec

    assert resources.align_model_files(get_spec("dlib-chip"), "hog") == [resources.SHAPE_PREDICTOR_5]
    assert resources.align_model_files(get_spec("outerEyesAndNose"), "hog+cnn") == [
        resources.SHAPE_PREDICTOR_68, resources.CNN_FACE_DETECTOR]
    assert resources.align_model_files(get_spec("dlib-chip68"), "cnn") == [
        resources.SHAPE_PREDICTOR_68, resources.CNN_FACE_DETECTOR]


def test_registering_a_support_file_twice_or_of_an_unknown_kind_is_refused():
    from facenet_cli.models.catalogue import MODEL_FILES, ModelFile, register_file

    existing = MODEL_FILES["dlib-landmarks-5"]
    with pytest.raises(ValueError, match="twice"):
        register_file(existing)
    with pytest.raises(ValueError, match="kind"):
        register_file(ModelFile("x", "segmenter", existing.weights))
