"""The FaceNet/OpenFace inception networks: published sizes, output contract, checkpoints."""
from __future__ import annotations

import pytest
import torch

from facenet_cli.formats.checkpoints import save_checkpoint
from facenet_cli.errors import DataError, UnknownModel
from facenet_cli.nets.nn4 import ARCHITECTURE_NAMES, FaceNetInception, build_nn4, default_record

# OpenFace's published counts (net:getParameters() with embSize=128).
PUBLISHED_PARAMETERS = {
    "nn4.small2": 3_733_968,
    "nn4.small1": 5_579_520,
    "nn4": 6_959_088,
    "nn2": 7_472_144,
}


def faces(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 96, 96, generator=g) * 255


@pytest.fixture(scope="module", params=sorted(PUBLISHED_PARAMETERS))
def network(request) -> FaceNetInception:
    torch.manual_seed(0)
    return FaceNetInception(request.param).eval()


def test_every_architecture_has_a_published_count():
    assert set(ARCHITECTURE_NAMES) == set(PUBLISHED_PARAMETERS)


def test_parameter_count_is_published_one(network):
    assert sum(p.numel() for p in network.parameters()) == PUBLISHED_PARAMETERS[network.architecture]


def test_output_is_unit_128d(network):
    with torch.no_grad():
        out = network(faces(3))
    assert out.shape == (3, 128)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_channels_last_gives_same_embeddings(network):
    x = faces(2, seed=1)
    with torch.no_grad():
        plain = network(x)
        network.to(memory_format=torch.channels_last)
        try:
            cl = network(x.contiguous(memory_format=torch.channels_last))
        finally:
            network.to(memory_format=torch.contiguous_format)
    assert cl.shape == (2, 128)
    torch.testing.assert_close(cl, plain, atol=1e-4, rtol=1e-4)


def test_training_step_gives_finite_gradients():
    # L2 pooling over all-zero windows (DepthConcat's padding) must not produce NaNs.
    torch.manual_seed(0)
    net = FaceNetInception("nn4.small2").train()
    out = net(faces(4))
    (out[:2] - out[2:]).pow(2).sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads)  # every layer takes part in the embedding
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_default_record_is_openface_alignment_without_weights():
    rec = default_record("nn4.small2")
    assert rec.architecture == "nn4.small2"
    assert rec.weights is None
    assert rec.align.name == "outerEyesAndNose" and rec.align.size == 96
    assert rec.embedding_dim == 128
    assert 0.5 < rec.threshold < 1.5
    with pytest.raises(UnknownModel):
        default_record("nn5")


def test_build_loads_a_checkpoint(tmp_path):
    rec = default_record("nn4.small2")
    torch.manual_seed(1)
    trained = FaceNetInception("nn4.small2").eval()
    path = save_checkpoint(tmp_path / "ckpt.pt", {"state_dict": trained.state_dict(), "record": rec.to_dict()})
    loaded = build_nn4(rec, path).eval()
    x = faces(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x))


def test_build_rejects_other_weights(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": FaceNetInception("nn4.small2").state_dict()}, path)
    with pytest.raises(DataError, match="does not hold nn4 weights"):
        build_nn4(default_record("nn4"), path)
    torch.save({"weights": {}}, path)
    with pytest.raises(DataError, match="lacks 'state_dict'"):
        build_nn4(default_record("nn4.small2"), path)
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="damaged or not a PyTorch checkpoint"):
        build_nn4(default_record("nn4.small2"), path)
