"""compress_side: the whole per-(module, side) step, mixed ranks included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import share_core as sc
from core_testing import TOL, low_rank, rel


@st.composite
def adapter_blocks(draw):
    """Blocks (d, r_i) of mixed widths cut from one matrix of known rank; (blocks, rank)."""
    d = draw(st.integers(1, 8))
    ws = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    n = sum(ws)
    rank = draw(st.integers(0, min(d, n)))
    svals = sorted(draw(st.lists(st.floats(0.1, 1.0), min_size=rank, max_size=rank)), reverse=True)
    x = low_rank(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), d, n, svals)
    cuts = np.cumsum([0, *ws])
    return [x[:, a:b] for a, b in zip(cuts[:-1], cuts[1:])], rank


def _rebuild(backend, basis, mean, loadings):
    return [backend.to_numpy(sc.reconstruct(l, basis, mean=mean)) for l in loadings]


@settings(max_examples=20, deadline=None)
@given(data=adapter_blocks(), center=st.booleans(), extra=st.integers(0, 3))
def test_every_adapter_comes_back_exactly_once_k_reaches_the_rank(backend, dtype, data, center, extra):
    blocks, rank = data
    basis, mean, loadings, energies = sc.compress_side(
        [backend.asarray(b, dtype) for b in blocks], k=rank + extra + 1, center=center
    )
    kk = basis.shape[1]
    assert 1 <= kk <= max(rank, 1)
    assert energies.shape[0] >= kk
    assert [tuple(l.shape) for l in loadings] == [(kk, b.shape[1]) for b in blocks]
    assert (mean is not None) == center
    for block, back in zip(blocks, _rebuild(backend, basis, mean, loadings)):
        held = block.astype(dtype).astype(np.float64)
        assert rel(held, back) < TOL[dtype] or np.abs(held - back).max() < TOL[dtype]


@settings(max_examples=20, deadline=None)
@given(data=adapter_blocks(), threshold=st.floats(0.05, 1.0))
def test_variance_threshold_is_met_with_the_fewest_components(backend, data, threshold):
    blocks, rank = data
    basis, _, loadings, energies = sc.compress_side([backend.asarray(b) for b in blocks], variance_threshold=threshold)
    kk = basis.shape[1]
    e = backend.to_numpy(energies)
    if rank == 0:
        assert kk == 1 and np.all(e == 0)
        return
    assert kk <= rank
    assert sc.explained_variance(energies, kk) >= threshold - 1e-9
    if kk > 1:
        assert sc.explained_variance(energies, kk - 1) < threshold
    kept = sum(np.sum(backend.to_numpy(l) ** 2) for l in loadings)
    assert np.isclose(kept, e[:kk].sum(), rtol=1e-8)


def test_mixed_ranks_share_one_basis(backend, dtype):
    rng = np.random.default_rng(7)
    shared = low_rank(rng, 12, 6, [1.0, 0.8, 0.6, 0.4, 0.3, 0.2])
    blocks = [shared[:, :1], shared[:, 1:3], shared[:, 3:6]]
    basis, _, loadings, _ = sc.compress_side([backend.asarray(b, dtype) for b in blocks], k=6)
    assert tuple(basis.shape) == (12, 6)
    assert [tuple(l.shape) for l in loadings] == [(6, 1), (6, 2), (6, 3)]
    truncated, _, small, _ = sc.compress_side([backend.asarray(b, dtype) for b in blocks], k=2)
    errors = [rel(b, r) for b, r in zip(blocks, _rebuild(backend, truncated, None, small))]
    assert max(errors) > 0.1  # two components cannot hold six directions


@pytest.mark.parametrize("center", [False, True])
def test_all_zero_data_gives_one_unit_component_and_exact_reconstruction(backend, center):
    blocks = [backend.asarray(np.full((4, 2), 3.0 if center else 0.0)), backend.asarray(np.full((4, 3), 3.0 if center else 0.0))]
    basis, mean, loadings, energies = sc.compress_side(blocks, k=2, center=center)
    assert np.array_equal(backend.to_numpy(basis), np.eye(4, 1))
    assert np.array_equal(backend.to_numpy(energies), [0.0])
    assert all(np.all(backend.to_numpy(l) == 0) for l in loadings)
    for block, back in zip(blocks, _rebuild(backend, basis, mean, loadings)):
        assert np.allclose(back, backend.to_numpy(block))


def test_compress_side_validates_before_computing(backend):
    blocks = [backend.asarray(np.ones((3, 2)))]
    with pytest.raises(sc.InvalidArgumentError):
        sc.compress_side(blocks)
    with pytest.raises(sc.InvalidArgumentError):
        sc.compress_side(blocks, k=1, variance_threshold=0.5)
    with pytest.raises(sc.InvalidArgumentError):
        sc.compress_side(blocks, k=1, method="qr")
