"""C3D: the network's shapes, strict weight loading, and the preprocessing contract of DESIGN.md section 4."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from drn.errors import InputError
from pipeline.c3d import (
    C3D,
    C3DConfig,
    C3DFeatureExtractor,
    build_c3d,
    check_state_dict,
    expected_shapes,
    load_c3d_weights,
    preprocess,
    random_weights_id,
    store_metadata,
)


@pytest.fixture(scope="module")
def random_c3d() -> C3D:
    return build_c3d(None, seed=7)


def _state_dict(with_fc8: bool = True) -> dict[str, torch.Tensor]:
    """A state dict with the Sports-1M keys and shapes (the real file cannot be fetched); cheap to build."""
    state = {k: torch.zeros(shape) for k, shape in expected_shapes().items() if with_fc8 or not k.startswith("fc8.")}
    gen = torch.Generator().manual_seed(0)
    for key in ("conv1.weight", "conv5b.weight", "fc6.bias"):
        state[key] = torch.randn(state[key].shape, generator=gen) * 0.01
    return state


def test_preprocessing_matches_the_contract_on_a_known_input() -> None:
    frames = np.zeros((1, 16, 128, 171, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 200, 100, 50  # R, G, B
    frames[0, 0, 8, 29] = (10, 20, 30)  # the crop's top-left pixel: rows 8..119, columns 29..140
    frames[0, 0, 7, 29] = (255, 255, 255)  # just above the crop
    frames[0, 3, 119, 140] = (0, 0, 0)  # the crop's bottom-right pixel
    x = preprocess(frames)
    assert x.shape == (1, 3, 16, 112, 112) and x.dtype == torch.float32
    # channel 0 is blue: 50 - 90.25; channel 1 green: 100 - 97.66; channel 2 red: 200 - 101.41
    np.testing.assert_allclose(x[0, :, 5, 50, 50].numpy(), [-40.25, 2.34, 98.59], atol=1e-4)
    np.testing.assert_allclose(x[0, :, 0, 0, 0].numpy(), [30 - 90.25, 20 - 97.66, 10 - 101.41], atol=1e-4)
    np.testing.assert_allclose(x[0, :, 3, 111, 111].numpy(), [-90.25, -97.66, -101.41], atol=1e-4)
    assert float(x.max()) < 255 - 90.25  # the white pixel outside the crop is gone
    np.testing.assert_allclose(float(x[0, 2].mean()), 98.59, atol=0.05)  # no division by a std


def test_network_features_have_the_design_shapes(random_c3d: C3D) -> None:
    crops = np.random.default_rng(0).integers(0, 256, (1, 16, 112, 112, 3), dtype=np.uint8)
    fc6 = C3DFeatureExtractor(random_c3d, layer="fc6", batch_size=1)(crops)
    assert fc6.shape == (1, 4096) and np.isfinite(fc6).all() and (fc6 >= 0).all()
    assert (fc6 > 0).mean() > 0.1  # random weights still give a live ReLU(fc6)
    x = preprocess(np.pad(crops, ((0, 0), (0, 0), (8, 8), (29, 30), (0, 0))))
    with torch.inference_mode():
        fc7 = random_c3d(x, "fc7")
    assert fc7.shape == (1, 4096) and (fc7 >= 0).all()
    assert random_c3d.fc6.in_features == 8192  # pool5 with padding (0, 1, 1) gives 512 x 1 x 4 x 4
    assert random_c3d.fc8.out_features == 487
    bf16 = C3DFeatureExtractor(random_c3d, layer="fc6", dtype="bfloat16", batch_size=2)(crops)
    np.testing.assert_allclose(bf16, fc6, atol=0.05 * float(np.abs(fc6).max()))


def test_random_weights_are_seeded_and_recorded(random_c3d: C3D) -> None:
    again = build_c3d(None, seed=7)
    assert torch.equal(again.conv1.weight, random_c3d.conv1.weight)
    assert torch.equal(again.fc6.bias, random_c3d.fc6.bias)
    meta = store_metadata(C3DConfig(weights="random", seed=7), random_weights_id(7))
    assert meta.weights_sha256 == "random-seed7" and meta.feature_dim == 4096 and meta.layer == "fc6"


def test_state_dict_checks_name_missing_and_misshaped_keys() -> None:
    good = _state_dict(with_fc8=False)  # fc8 may be absent
    assert set(check_state_dict(good, "c3d.pickle")) == set(good)
    missing = {k: v for k, v in good.items() if k != "conv3a.weight"}
    with pytest.raises(InputError, match=r"c3d.pickle: .*missing keys: conv3a.weight"):
        check_state_dict(missing, "c3d.pickle")
    misshaped = dict(good, **{"fc6.weight": torch.zeros(4096, 4096)})
    with pytest.raises(InputError, match=r"misshaped: fc6.weight \(4096, 4096\) \(expected \(4096, 8192\)\)"):
        check_state_dict(misshaped, "c3d.pickle")
    with pytest.raises(InputError, match="unexpected keys: module.extra"):
        check_state_dict(dict(good, **{"module.extra": torch.zeros(1)}), "c3d.pickle")
    with pytest.raises(InputError, match="not a C3D state dict"):
        check_state_dict([1, 2], "c3d.pickle")


def test_weights_file_loads_strictly_with_its_sha256(tmp_path) -> None:
    state = _state_dict(with_fc8=True)
    path = tmp_path / "c3d.pickle"
    torch.save(state, path)
    weights, sha = load_c3d_weights(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    model = build_c3d(weights)
    assert torch.equal(model.conv5b.weight, state["conv5b.weight"]) and torch.equal(model.fc8.bias, state["fc8.bias"])
    broken = tmp_path / "broken.pickle"
    torch.save({k: v for k, v in state.items() if k.startswith("conv")}, broken)
    with pytest.raises(InputError, match="broken.pickle: .*missing keys: fc6.weight, fc6.bias, fc7.weight, fc7.bias"):
        load_c3d_weights(broken)
    with pytest.raises(InputError, match="not found"):
        load_c3d_weights(tmp_path / "absent.pickle")
    (tmp_path / "junk.pickle").write_text("junk")
    with pytest.raises(InputError, match="cannot read C3D weights"):
        load_c3d_weights(tmp_path / "junk.pickle")
