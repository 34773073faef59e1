"""dlib's ResNet read into PyTorch: the byte readers, and equality with dlib on real faces."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from facenet_cli.models import resources
from facenet_cli.models.catalogue import get_record
from facenet_cli.errors import DataError
from facenet_cli.nets import build_network
from facenet_cli.nets.dlib_resnet import (DlibStream, load_dlib_resnet, max_pool_unpadded, read_dlib_net,
                                          zero_padded_add)
from tests._dlib_chips import grace_hopper_path, lfw_chips, photo_chips


@pytest.fixture(scope="module")
def dat_path():
    return resources.dlib_model_path(resources.DLIB_RESNET)


@pytest.fixture(scope="module")
def network(dat_path):
    return load_dlib_resnet(dat_path)


# --- byte readers on hand-made bytes --------------------------------------------------------

@pytest.mark.parametrize("data, value", [
    (b"\x01\x00", 0),
    (b"\x01\x05", 5),
    (b"\x02\x00\x01", 256),
    (b"\x81\x1c", -28),
    (b"\x03\x0a\xd7\xa3", 0xA3D70A),
    (b"\x88" + (2**62 + 3).to_bytes(8, "little"), -(2**62 + 3)),
])
def test_reads_integers(data, value):
    stream = DlibStream(data)
    assert stream.read_int() == value
    assert stream.at_end()


@pytest.mark.parametrize("data, value", [
    (b"\x01\x10\x81\x04", 1.0),  # 16 * 2**-4, as dlib writes 1.0
    (b"\x01\x03\x81\x01", 1.5),
    (b"\x81\x05\x01\x00", -5.0),
    (b"\x01\x00\x01\x0b", 0.0),  # dlib writes 0 with a nonzero exponent
    (b"\x03\x0a\xd7\xa3\x81\x1c", 0xA3D70A * 2.0**-28),
    (b"\x01\x01\x02\x00\x7d", math.inf),   # exponent 32000
    (b"\x01\x01\x02\x01\x7d", -math.inf),  # 32001
])
def test_reads_floats(data, value):
    assert DlibStream(data).read_float() == value


def test_reads_nan():
    assert math.isnan(DlibStream(b"\x01\x01\x02\x02\x7d").read_float())


def test_reads_strings_bools_and_tensors():
    floats = struct.pack("<2f", 0.5, -2.0)
    data = b"\x01\x04fc_2" + b"10" + b"\x01\x02" + b"\x01\x01\x01\x02\x01\x01\x01\x01" + floats
    stream = DlibStream(data)
    assert stream.read_string() == "fc_2"
    assert stream.read_bool() is True
    assert stream.read_bool() is False
    tensor = stream.read_tensor()
    assert tensor.shape == (1, 2, 1, 1) and tensor.dtype == np.float32
    assert tensor.ravel().tolist() == [0.5, -2.0]
    assert stream.at_end()


@pytest.mark.parametrize("data", [b"", b"\x02\x01", b"\x09" + bytes(9), b"\x11\x00"])
def test_bad_integers_are_data_errors(data):
    with pytest.raises(DataError):
        DlibStream(data).read_int()


def test_truncated_file_is_a_data_error(dat_path, tmp_path):
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(dat_path.read_bytes()[:1_000_000])
    with pytest.raises(DataError, match="truncated"):
        read_dlib_net(truncated)


# --- structure -----------------------------------------------------------------------------

def test_file_structure(dat_path):
    net = read_dlib_net(dat_path)
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29
    assert kinds[-2:] == ["avg_pool", "fc"]
    assert net.input_size == (150, 150)
    assert all(100 < mean < 130 for mean in net.mean_rgb)


def test_zero_padded_add_pads_at_the_end():
    small = torch.ones(1, 2, 1, 1)
    large = torch.full((1, 3, 2, 2), 10.0)
    total = zero_padded_add(small, large)
    assert total.shape == (1, 3, 2, 2)
    assert total[0, :2, 0, 0].tolist() == [11.0, 11.0]
    assert total.sum().item() == 10.0 * 12 + 2


@pytest.mark.parametrize("size", [72, 9, 8])
def test_separable_max_pool_equals_torchs(size):
    x = torch.randn(2, 5, size, size + 1).contiguous(memory_format=torch.channels_last)
    assert torch.equal(max_pool_unpadded(x, (3, 3), (2, 2)), torch.nn.functional.max_pool2d(x, 3, 2))


def test_registry_builds_the_catalogued_model(dat_path):
    model = build_network(get_record("dlib-resnet.v1"), dat_path)
    assert not model.training
    assert model(torch.zeros(1, 3, 150, 150)).shape == (1, 128)


# --- equality with dlib --------------------------------------------------------------------

def assert_matches_dlib(network, dat_path, chips: list[np.ndarray]) -> np.ndarray:
    """Our network's vectors equal dlib's compute_face_descriptor on the same chips, in both memory layouts."""
    import dlib

    reference_model = dlib.face_recognition_model_v1(str(dat_path))
    expected = np.array([reference_model.compute_face_descriptor(chip, num_jitters=0) for chip in chips])
    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        planar = network.to(memory_format=torch.contiguous_format)(batch.contiguous()).numpy()
        channels_last = network.to(memory_format=torch.channels_last)(batch).numpy()
    assert planar.shape == (len(chips), 128)
    np.testing.assert_allclose(planar, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(channels_last, expected, rtol=0, atol=1e-5)
    return expected


def test_matches_dlib_on_a_face_that_ships_with_a_dependency(network, dat_path):
    """Never skips: matplotlib (a required dependency) ships this portrait."""
    chip = photo_chips([grace_hopper_path()])[0]
    mirrored = np.ascontiguousarray(chip[:, ::-1])
    expected = assert_matches_dlib(network, dat_path, [chip, mirrored])
    # A real descriptor (not a zero vector), and the mirror image, another input, gets another one.
    assert 0.2 < np.linalg.norm(expected[0]) < 2.0
    assert np.linalg.norm(expected[0] - expected[1]) > 1e-3


def test_matches_dlib_on_real_faces(network, dat_path, lfw_images):
    chips = lfw_chips(lfw_images, 6)
    assert len(chips) == 6
    expected = assert_matches_dlib(network, dat_path, chips)
    # Guard against a test that passes trivially: different faces give different vectors.
    assert np.linalg.norm(expected[0] - expected[1]) > 0.1
