"""adapters/volume/refine.py: integrated-gradient maps from a healthy baseline, checked against
hand-worked integrals (a linear and a quadratic model) and scipy's Gaussian filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from bioviz.adapters.volume.refine import attribution_map, healthy_baseline
from bioviz.errors import InputError


class Linear(torch.nn.Module):
    """f(x) = sum(W * x) + 1, with a second output 2 * f: IG is exactly (x - b) * W."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float32))

    def forward(self, x):
        f = (x * self.w).flatten(1).sum(1, keepdim=True) + 1
        return torch.cat([f, 2 * f], 1)


class Square(torch.nn.Module):
    """f(x) = sum(x**2): IG from b to x is x**2 - b**2 per voxel (hand-worked integral)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return (x ** 2).flatten(1).sum(1, keepdim=True) + 0 * self.dummy


@pytest.fixture
def vols():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    b = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    w = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    return x, b, w


def test_linear_model_matches_exact_ig(vols):
    x, b, w = vols
    m = attribution_map(Linear(w), torch.tensor(x), torch.tensor(b), n_steps=4, sigma_vox=0)
    want = np.abs((x.astype(np.float64) - b) * w).sum(0)
    np.testing.assert_allclose(m.numpy(), want, rtol=1e-4, atol=1e-5)
    # the second output is twice the first
    m2 = attribution_map(Linear(w), torch.tensor(x), torch.tensor(b), target=1, n_steps=4, sigma_vox=0)
    np.testing.assert_allclose(m2.numpy(), 2 * want, rtol=1e-4, atol=1e-5)


def test_path_starts_at_the_baseline(vols):
    x, b, _ = vols
    m = attribution_map(Square(), torch.tensor(x), torch.tensor(b), n_steps=3, sigma_vox=0)
    want = np.abs(x.astype(np.float64) ** 2 - b.astype(np.float64) ** 2).sum(0)
    np.testing.assert_allclose(m.numpy(), want, rtol=1e-4, atol=1e-5)


def test_smoothing_is_scipy_gaussian(vols):
    x, b, w = vols
    m = attribution_map(Linear(w), torch.tensor(x), torch.tensor(b), n_steps=4, sigma_vox=1.2)
    want = gaussian_filter(np.abs((x.astype(np.float64) - b) * w).sum(0), 1.2)
    np.testing.assert_allclose(m.numpy(), want, rtol=1e-4, atol=1e-5)


def test_planted_dark_blob_is_found():
    # a model that sums darkness below the healthy level: the map should peak on the blob
    rng = np.random.default_rng(1)
    healthy = np.ones((1, 16, 16, 16), np.float32)
    scan = healthy + rng.normal(0, 0.05, healthy.shape).astype(np.float32)
    ii = np.indices((16, 16, 16))
    blob = ((ii - np.array([4, 10, 7])[:, None, None, None]) ** 2).sum(0) <= 4
    scan[0][blob] -= 0.6

    class Dark(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, z):
            return torch.relu(0.8 - z).flatten(1).sum(1, keepdim=True) + 0 * self.dummy

    m = attribution_map(Dark(), torch.tensor(scan), torch.tensor(healthy), sigma_vox=1.0).numpy()
    peak = np.unravel_index(np.argmax(m), m.shape)
    assert blob[peak]
    top = m >= np.sort(m.ravel())[-blob.sum()]
    assert 2 * (top & blob).sum() / (top.sum() + blob.sum()) > 0.8


@pytest.mark.parametrize("kw, match", [
    ({"baseline": torch.zeros(2, 6, 5, 3)}, "baseline shape"),
    ({"image": torch.zeros(6, 5, 4)}, "image: expected"),
    ({"n_steps": 0}, "n_steps"),
    ({"sigma_vox": -1.0}, "sigma_vox"),
    ({"target": 5}, "target=5"),
    ({"image": torch.full((2, 6, 5, 4), float("nan"))}, "NaN"),
])
def test_bad_input(vols, kw, match):
    x, b, w = vols
    args = {"image": torch.tensor(x), "baseline": torch.tensor(b)}
    args.update({k: kw.pop(k) for k in ("image", "baseline") if k in kw})
    with pytest.raises(InputError, match=match):
        attribution_map(Linear(w), args["image"], args["baseline"], **kw)


class _Img:
    def __init__(self, a):
        self.a = torch.as_tensor(a)

    def as_tensor(self):
        return self.a


class _Stub:
    """Just what healthy_baseline uses of a VolumeAdapter."""

    def __init__(self, images):
        self.images = images
        self.cohort = self

    def find(self, sid):
        return sid

    def prepare_scan(self, sid):
        return {"image": _Img(self.images[sid])}


def test_healthy_baseline_is_the_mean():
    rng = np.random.default_rng(2)
    imgs = {f"s{i}": rng.normal(size=(1, 4, 3, 2)).astype(np.float32) for i in range(3)}
    got = healthy_baseline(_Stub(imgs), ["s0", "s2"], progress=False)
    np.testing.assert_allclose(got.numpy(), (imgs["s0"].astype(np.float64) + imgs["s2"]) / 2, rtol=1e-6)
    imgs["s1"] = np.zeros((1, 4, 3, 3), np.float32)
    with pytest.raises(InputError, match="one grid"):
        healthy_baseline(_Stub(imgs), ["s0", "s1"], progress=False)
    with pytest.raises(InputError, match="empty"):
        healthy_baseline(_Stub(imgs), [], progress=False)
