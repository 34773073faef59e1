"""The embedding engine on real dlib chips: unit length, flip symmetry, batching, distances."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from facenet_cli.models.catalogue import get_record
from facenet_cli.nets.embedder import Embedder, normalise, squared_distances
from facenet_cli.errors import SpecMismatch, UsageError
from tests._dlib_chips import lfw_chips

RECORD = get_record("dlib-resnet.v1")


@pytest.fixture(scope="module")
def chips(lfw_images):
    return lfw_chips(lfw_images, 5)


@pytest.fixture(scope="module")
def embedder():
    return Embedder(RECORD, device="cpu", batch_size=32)


@pytest.fixture(scope="module")
def flip_embedder():
    return Embedder(RECORD, device="cpu", flip=True, batch_size=32)


def mirror(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def test_embeddings_have_unit_length(embedder, chips):
    vectors = embedder.embed(chips)
    assert vectors.shape == (5, 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_raw_vectors_are_dlibs(embedder, chips):
    import dlib

    from facenet_cli.models import resources

    reference = dlib.face_recognition_model_v1(str(resources.dlib_model_path(resources.DLIB_RESNET)))
    expected = np.array(reference.compute_face_descriptor(chips[0], num_jitters=0), dtype=np.float32)
    raw = embedder.embed(chips[:1], raw=True)[0]
    np.testing.assert_allclose(raw, expected, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(chips[:1])[0], expected / np.linalg.norm(expected), atol=1e-5)


def test_flip_makes_an_image_and_its_mirror_equal(flip_embedder, embedder, chips):
    originals = flip_embedder.embed(chips[:3])
    mirrored = flip_embedder.embed([mirror(c) for c in chips[:3]])
    np.testing.assert_allclose(originals, mirrored, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(originals, axis=1), 1.0, atol=1e-6)
    # Flipping changes the vector (mirror images are not embedded identically)...
    plain = embedder.embed(chips[:3])
    assert np.abs(originals - plain).max() > 1e-3
    # ...and is the normalised mean of the raw vectors of both views.
    both = embedder.embed(chips[:1] + [mirror(chips[0])], raw=True)
    np.testing.assert_allclose(originals[0], normalise(both.mean(0, keepdims=True))[0], atol=1e-5)


def test_batch_size_does_not_change_results(embedder, chips):
    one_at_a_time = Embedder(RECORD, device="cpu", batch_size=1).embed(chips)
    in_pairs = Embedder(RECORD, device="cpu", batch_size=2).embed(chips)  # last batch is short
    together = embedder.embed(chips)
    np.testing.assert_allclose(one_at_a_time, together, atol=1e-5)
    np.testing.assert_allclose(in_pairs, together, atol=1e-5)


def test_same_picture_is_at_distance_zero(embedder, chips):
    vectors = embedder.embed([chips[0], chips[0].copy(), chips[1]])
    distances = squared_distances(vectors, vectors)
    assert distances.shape == (3, 3)
    assert distances[0, 1] < 1e-10
    np.testing.assert_allclose(np.diag(distances), 0.0, atol=1e-10)
    assert distances[0, 2] > 0.1  # two different people
    np.testing.assert_allclose(distances, distances.T, atol=1e-12)


def test_center_is_subtracted_before_normalising(embedder, chips):
    center = tuple(float(v) for v in np.linspace(-0.05, 0.05, 128))
    centred = Embedder(replace(RECORD, center=center), device="cpu")
    raw = embedder.embed(chips[:2], raw=True)
    expected = raw - np.float32(center)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(centred.embed(chips[:2]), expected, atol=1e-6)


def test_squared_distances_on_known_vectors():
    a = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    b = np.array([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(squared_distances(a, b), [[0.0, 4.0, 0.8], [2.0, 2.0, 0.4]], atol=1e-7)
    with pytest.raises(UsageError):
        squared_distances(a, np.zeros((1, 3)))


def test_empty_input_gives_an_empty_array(embedder):
    assert embedder.embed([]).shape == (0, 128)


def test_rejects_crops_of_the_wrong_size_or_type(embedder, chips):
    with pytest.raises(SpecMismatch):
        embedder.embed([np.zeros((96, 96, 3), dtype=np.uint8)])
    with pytest.raises(UsageError):
        embedder.embed([chips[0].astype(np.float32)])


def test_bad_device_and_batch_size_are_usage_errors():
    with pytest.raises(UsageError):
        Embedder(RECORD, device="tpu")
    with pytest.raises(UsageError):
        Embedder(RECORD, batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError):
            Embedder(RECORD, device="cuda")
