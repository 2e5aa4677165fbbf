"""merge_bases: the basis of a union from the thin SVDs of its parts equals the one-shot basis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_testing import TOL
from share_core import basis, merge_bases
from share_core.errors import ShapeError, ShareError


def _parts(seed: int, d: int, widths: list[int], rank: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, rank))
    return [mix @ rng.normal(size=(rank, w)) + rng.normal(size=(d, 1)) for w in widths]


def _projector(u) -> np.ndarray:
    u = np.asarray(u, dtype=np.float64)
    return u @ u.T


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(6, 30), widths=st.lists(st.integers(1, 6), min_size=2, max_size=5),
       rank=st.integers(1, 8), center=st.booleans())
def test_merging_chunks_equals_one_shot(backend, dtype, seed, d, widths, rank, center):
    xp = backend.xp
    parts = _parts(seed, d, widths, rank)
    whole = backend.asarray(np.concatenate(parts, axis=1), dtype)
    u_ref, e_ref, m_ref = basis(whole, center=center)
    state = None
    for part in parts:
        u, e, m = basis(backend.asarray(part, dtype), center=center)
        piece = (u, xp.sqrt(e), m, part.shape[1])
        if state is None:
            state = piece
        elif center:
            state = merge_bases(state[0], state[1], piece[0], piece[1], mean1=state[2], n1=state[3],
                                mean2=piece[2], n2=piece[3])
        else:
            state = (*merge_bases(state[0], state[1], piece[0], piece[1])[:2], None, None)
    u, s, m, _ = state
    assert u.shape == u_ref.shape  # same numerical rank
    scale = float(np.max(backend.to_numpy(e_ref)))
    np.testing.assert_allclose(backend.to_numpy(s) ** 2, backend.to_numpy(e_ref), atol=TOL[dtype] * scale * 10,
                               rtol=TOL[dtype] * 10)
    np.testing.assert_allclose(_projector(backend.to_numpy(u)), _projector(backend.to_numpy(u_ref)),
                               atol=TOL[dtype] * 100)
    if center:
        np.testing.assert_allclose(backend.to_numpy(m), backend.to_numpy(m_ref), atol=TOL[dtype] * 100 * scale)
    assert type(u) is type(u_ref)


def test_merge_rejects_mismatched_parts(backend):
    u1, e1, m1 = basis(backend.asarray(np.eye(5)[:, :2]), center=True)
    u2, e2, _ = basis(backend.asarray(np.eye(6)[:, :2]))
    with pytest.raises(ShapeError, match="different row counts"):
        merge_bases(u1, e1, u2, e2)
    with pytest.raises(ShareError, match="mean"):
        merge_bases(u1, e1, u1, e1, mean1=m1, n1=2)
