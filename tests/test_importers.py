"""Importers: stores built from per-video .npy/.pt files and from an HDF5 file with one group per video."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from drn.errors import InputError
from drn.store import FeatureStore
from jobs import import_features
from pipeline.importers import ClipTiming, import_arrays, import_hdf5


def test_arrays_import_with_times_and_failures(tmp_path: Path) -> None:
    src = tmp_path / "feats"
    src.mkdir()
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 12)).astype(np.float32)
    b = rng.normal(size=(2, 12)).astype(np.float32)
    np.save(src / "a.npy", a)
    torch.save(torch.from_numpy(b), src / "b.pt")
    np.save(src / "flat.npy", np.zeros(12, np.float32))
    bad = np.ones((3, 12), np.float32)
    bad[1, 4] = np.nan
    np.save(src / "nan.npy", bad)
    np.save(src / "narrow.npy", np.ones((3, 7), np.float32))
    summary = import_arrays([src], tmp_path / "store", ClipTiming(16, 8, 25.0), dtype="float32",
                            durations={"b": 1.2})
    assert (summary.done, summary.failed) == (2, 3)
    store = FeatureStore(tmp_path / "store")
    assert store.metadata.feature_dim == 12 and store.metadata.fps == "25" and store.metadata.extractor == "imported"
    loaded = store.load("a")
    np.testing.assert_array_equal(loaded.features, a)
    np.testing.assert_allclose(loaded.clip_start_s, np.arange(5) * 8 / 25)
    np.testing.assert_allclose(loaded.clip_end_s, (np.arange(5) * 8 + 16) / 25)
    assert loaded.duration_s == pytest.approx((4 * 8 + 16) / 25)
    assert store.load("b").duration_s == pytest.approx(1.2)
    errors = {r["video_id"]: r["error"] for r in store.videos().to_pylist() if r["status"] == "failed"}
    assert "shape (12,)" in errors["flat"] and "NaN" in errors["nan"] and "7-d" in errors["narrow"]


def test_hdf5_import_in_the_activitynet_layout(tmp_path: Path) -> None:
    path = tmp_path / "sub_activitynet_v1-3.c3d.hdf5"
    rng = np.random.default_rng(1)
    feats = {"v_abc": rng.normal(size=(4, 500)), "v_def": rng.normal(size=(1, 500))}
    with h5py.File(path, "w") as handle:
        for vid, f in feats.items():
            handle.create_group(vid).create_dataset("c3d_features", data=f)
        handle.create_group("v_empty").create_dataset("other", data=np.zeros(3))
    summary = import_hdf5(path, tmp_path / "store", ClipTiming(16, 8, 30.0), layer="fc7-pca500")
    assert (summary.done, summary.failed) == (2, 1)
    store = FeatureStore(tmp_path / "store")
    assert store.metadata.layer == "fc7-pca500" and store.metadata.weights_sha256.startswith("hdf5:")
    loaded = store.load("v_abc")
    assert loaded.features.dtype == np.float16
    np.testing.assert_allclose(loaded.features, feats["v_abc"].astype(np.float16), rtol=1e-3)
    np.testing.assert_allclose(loaded.clip_end_s, (np.arange(4) * 8 + 16) / 30, rtol=1e-6)
    assert "no dataset 'c3d_features'" in {r["video_id"]: r["error"] for r in store.videos().to_pylist()}["v_empty"]


def test_import_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(InputError, match="no .npy or .pt files"):
        import_arrays([tmp_path], tmp_path / "s", ClipTiming())
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        import_hdf5(tmp_path / "x.h5", tmp_path / "s", ClipTiming())
    with pytest.raises(InputError, match="positive"):
        ClipTiming(16, 0, 30.0)
    assert import_features.main(["--hdf5", str(tmp_path / "absent.h5"), "--out", str(tmp_path / "s")]) == 2
    assert "HDF5 file not found" in capsys.readouterr().err
    np.save(tmp_path / "v.npy", np.ones((2, 3), np.float32))
    assert import_features.main(["--npy", str(tmp_path / "v.npy"), "--out", str(tmp_path / "s")]) == 0
    assert FeatureStore(tmp_path / "s").ok_video_ids() == ["v"]
