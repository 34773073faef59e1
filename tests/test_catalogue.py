"""Every registered model agrees with its record: it builds, verifies and gives unit vectors of its size."""
from __future__ import annotations

import numpy as np
import pytest

import facenet_cli
from facenet_cli.align_specs import SPECS
from facenet_cli.catalogue import CATALOGUE, ModelRecord, list_models
from facenet_cli.embed import Embedder
from facenet_cli.hub import status


def test_public_api_names_resolve():
    for name in facenet_cli.__all__:
        assert getattr(facenet_cli, name) is not None


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
