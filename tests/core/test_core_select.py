"""select_k and explained_variance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import share_core as sc
from share_core.errors import ShapeError, ShareError

spectra = st.lists(st.floats(1e-3, 10.0), min_size=1, max_size=12).map(lambda v: sorted(v, reverse=True))


@settings(max_examples=30, deadline=None)
@given(energies=spectra, k=st.integers(1, 20))
def test_fixed_k_is_capped_at_the_rank(backend, energies, k):
    assert sc.select_k(backend.asarray(np.array(energies)), k=k) == min(k, len(energies))


@settings(max_examples=30, deadline=None)
@given(energies=spectra, threshold=st.floats(0.01, 1.0))
def test_threshold_picks_the_smallest_k_that_reaches_it(backend, energies, threshold):
    e = backend.asarray(np.array(energies))
    k = sc.select_k(e, variance_threshold=threshold)
    assert 1 <= k <= len(energies)
    fractions = np.cumsum(energies) / np.sum(energies)
    assert fractions[k - 1] >= threshold - 1e-12 or k == len(energies)
    if k > 1:
        assert fractions[k - 2] < threshold
    assert math.isclose(sc.explained_variance(e, k), fractions[k - 1], rel_tol=1e-12)


def test_threshold_one_keeps_every_component(backend):
    e = backend.asarray(np.array([5.0, 1.0, 1e-9]))
    assert sc.select_k(e, variance_threshold=1.0) == 3
    assert sc.select_k(e, variance_threshold=0.8) == 1


def test_zero_rank_and_zero_energy(backend):
    assert sc.select_k(backend.asarray(np.zeros(0)), k=3) == 0
    assert sc.select_k(backend.asarray(np.zeros(0)), variance_threshold=0.5) == 0
    assert sc.select_k(backend.asarray(np.zeros(2)), variance_threshold=0.5) == 1
    assert sc.explained_variance(backend.asarray(np.zeros(0)), 0) == 1.0


def test_explained_variance_values(backend):
    e = backend.asarray(np.array([3.0, 1.0]))
    assert sc.explained_variance(e, 0) == 0.0
    assert sc.explained_variance(e, 1) == 0.75
    assert sc.explained_variance(e, 5) == 1.0
    assert isinstance(sc.explained_variance(e, 1), float)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"k": 2, "variance_threshold": 0.5},
        {"k": 0},
        {"k": -1},
        {"k": 1.5},
        {"k": True},
        {"k": "3"},
        {"variance_threshold": 0.0},
        {"variance_threshold": 1.5},
        {"variance_threshold": float("nan")},
        {"variance_threshold": True},
    ],
)
def test_select_k_refuses_bad_options(backend, kwargs):
    with pytest.raises(sc.InvalidArgumentError) as info:
        sc.select_k(backend.asarray(np.ones(3)), **kwargs)
    assert isinstance(info.value, ShareError) and isinstance(info.value, ValueError)


def test_energies_must_be_one_dimensional(backend):
    with pytest.raises(ShapeError, match=r"\(2, 2\)"):
        sc.select_k(backend.asarray(np.ones((2, 2))), k=1)
    with pytest.raises(sc.InvalidArgumentError):
        sc.explained_variance(backend.asarray(np.ones(2)), -1)
