"""Issue 4: streaming and chunked compression give the all-at-once checkpoint; CUDA when present."""

from __future__ import annotations

import pytest
import torch

from share_torch import InvalidArgumentError, SHAREModel

from .conftest import save_adapter


@pytest.fixture(scope="module")
def many_adapters(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("many")
    return [save_adapter(root / f"task{i}", seed=i, r=2 + (i % 3), alpha=4 + i) for i in range(7)]


def _same_reconstructions(one: SHAREModel, two: SHAREModel, rtol: float) -> None:
    assert one.adapter_names == two.adapter_names
    for name in one.adapter_names:
        a, b = one.reconstruct(name), two.reconstruct(name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=rtol, atol=rtol * float(a[key].abs().max()))


@pytest.mark.parametrize("k", [64, 5])
@pytest.mark.parametrize("center", [False, True])
def test_chunked_equals_all_at_once(many_adapters, k, center):
    whole = SHAREModel.from_adapters(many_adapters, num_components=k, center=center)
    for chunk_size in (1, 3):
        chunked = SHAREModel.from_adapters(many_adapters, num_components=k, center=center, chunk_size=chunk_size)
        for module in whole.modules:
            for side in ("lora_A", "lora_B"):
                assert chunked.num_components(module, side) == whole.num_components(module, side)
        # At k below the rank the kept subspace is the same when the spectrum has a gap there;
        # the random adapters here have distinct singular values, so reconstructions agree.
        _same_reconstructions(whole, chunked, rtol=1e-3 if k == 5 else 1e-4)
        assert chunked.stats()["dw_error"] == pytest.approx(whole.stats()["dw_error"], rel=1e-3, abs=1e-6)


def test_layer_by_layer_equals_in_memory(many_adapters):
    in_memory = SHAREModel.from_adapters(many_adapters, num_components=4)
    streamed = SHAREModel.from_adapters(many_adapters, num_components=4, layer_by_layer=True)
    _same_reconstructions(in_memory, streamed, rtol=1e-6)
    both = SHAREModel.from_adapters(many_adapters, num_components=4, layer_by_layer=True, chunk_size=2)
    _same_reconstructions(in_memory, both, rtol=1e-3)


def test_streaming_reads_each_file_once_per_group_not_once_per_layer_name(many_adapters, monkeypatch):
    """layer 1 must not be confused with layers 10/11, and each (adapter, module) is read exactly once."""
    from share_hf.adapters import AdapterSource

    calls: list[tuple[str, str]] = []
    original = AdapterSource.load_factors

    def counting(self, module):
        calls.append((self.name, module))
        return original(self, module)

    monkeypatch.setattr(AdapterSource, "load_factors", counting)
    share = SHAREModel.from_adapters(many_adapters, num_components=4, layer_by_layer=True)
    assert len(calls) == len(set(calls)) == len(many_adapters) * len(share.modules)


def test_bad_chunk_size(many_adapters):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidArgumentError, match="chunk_size"):
            SHAREModel.from_adapters(many_adapters, chunk_size=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_gives_the_cpu_result(many_adapters):
    cpu = SHAREModel.from_adapters(many_adapters, num_components=64)
    gpu = SHAREModel.from_adapters(many_adapters, num_components=64, device="cuda")
    assert all(t.device.type == "cpu" for t in gpu._ckpt.components.values())  # results come back to the CPU
    _same_reconstructions(cpu, gpu, rtol=1e-4)


@pytest.mark.parametrize("r, k", [(4, 9), (6, 6), (5, 2)])
def test_refinement_columns_keep_the_left_singular_vectors_and_values(r, k):
    """A refinement half-step stacks y R^T (min(r, k) columns) for y m, with m^T = Q R: same left singular
    vectors and values, so its scatter costs r/k as much where there are more stacked columns than rows."""
    from share_torch._compress import _narrow

    g = torch.Generator().manual_seed(r * 10 + k)
    y, m = torch.randn(40, r, generator=g, dtype=torch.float64), torch.randn(r, k, generator=g, dtype=torch.float64)
    narrow = _narrow(y, m)
    assert narrow.shape == (40, min(r, k))
    full_u, full_s, _ = torch.linalg.svd(y @ m, full_matrices=False)
    u, s, _ = torch.linalg.svd(narrow, full_matrices=False)
    torch.testing.assert_close(s, full_s[:min(r, k)], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close((u.mT @ full_u[:, :min(r, k)]).abs(), torch.eye(min(r, k), dtype=torch.float64),
                               rtol=0, atol=1e-8)


def test_freed_heap_memory_can_be_handed_back_on_this_platform():
    # layer_by_layer calls it once per TRIM_EVERY_BYTES of modules; on glibc (Linux CI) it must not be a silent no-op
    import platform

    from share_torch._compress import _malloc_trim, release_freed_memory

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert _malloc_trim() is not None
    release_freed_memory()  # and calling it is harmless anywhere


def test_freed_memory_is_handed_back_once_per_threshold_of_module_bytes(monkeypatch):
    from share_torch import _compress

    calls = []
    monkeypatch.setattr(_compress, "release_freed_memory", lambda: calls.append(1))
    freed = _compress.FreedMemory(every=100)
    for size in (40, 40):
        freed.finished(size)
    assert calls == []
    freed.finished(40)  # 120 >= 100: one trim, and the count starts again
    assert len(calls) == 1
    freed.finished(99)
    assert len(calls) == 1
    freed.finished(500)  # a module at or above the threshold is always followed by a trim
    freed.finished(500)
    assert len(calls) == 3
    freed.flush()  # nothing finished since the last trim
    assert len(calls) == 3
    freed.finished(10)
    freed.flush()  # the end of the run: what is pending is handed back
    assert len(calls) == 4


@pytest.mark.parametrize("every", [1, None])
def test_layer_by_layer_trims_by_bytes_not_after_every_small_module(many_adapters, monkeypatch, every):
    """These modules hold a few KB each: under the default threshold one trim is owed, at the end; with a 1-byte
    threshold (what a 512 MB module of 1000 Llama-7B adapters meets) each module is followed by one."""
    from share_torch import _compress

    calls = []
    monkeypatch.setattr(_compress, "release_freed_memory", lambda: calls.append(1))
    if every is not None:
        monkeypatch.setattr(_compress, "TRIM_EVERY_BYTES", every)
    model = SHAREModel.from_adapters(many_adapters, num_components=4, layer_by_layer=True)
    expected = len(model.modules) if every == 1 else 1
    assert len(model.modules) > 1 and len(calls) == expected
    SHAREModel.from_adapters(many_adapters, num_components=4)  # in memory: nothing is trimmed
    assert len(calls) == expected


def _block(ranks, scales, seed=0, d_out=40, d_in=36):
    """Folded pairs of one module with the given ranks, rebuilt columns (a perturbation of their stacks, laid out
    as `restore` gives them: B^ (d_out, n), A^ transposed (d_in, n)), the adapters' column spans and scales."""
    from share_torch._compress import columns

    gen = torch.Generator().manual_seed(seed)
    folded = [(torch.randn(r, d_in, generator=gen), torch.randn(d_out, r, generator=gen) * 0.1) for r in ranks]
    stacks = {side: torch.cat(columns(folded, side), dim=1) for side in ("lora_A", "lora_B")}
    rebuilt = {side: x + 0.01 * torch.randn(x.shape, generator=gen) for side, x in stacks.items()}
    ends = torch.tensor(ranks).cumsum(0).tolist()
    return folded, rebuilt, list(zip([0, *ends[:-1]], ends)), scales


@pytest.mark.parametrize("d_out, d_in", [(40, 36), (36, 40)])  # the error QR on B's side, then on A's
@pytest.mark.parametrize("ranks, dtypes", [
    ([4, 4, 4], [torch.bfloat16] * 3),                            # one rank, one dtype: the block route
    ([4, 4, 4], [torch.float16] * 3),
    ([4, 4, 4], [torch.float32] * 3),
    ([4, 4, 4], [torch.bfloat16, torch.float16, torch.float32]),  # mixed dtypes: pair by pair
    ([2, 4, 3], [torch.bfloat16] * 3),                            # mixed ranks: pair by pair
])
def test_block_dw_errors_give_the_pair_by_pair_errors_of_what_is_written(ranks, dtypes, d_out, d_in, monkeypatch):
    """A block's dW errors, with the rounding to the adapters' dtype done for the block at once (on a transposed
    copy of the rebuilt columns), equal those of each adapter's factors as written (`as_written`) pair by pair,
    to the bit; the rebuilt columns are left as they were."""
    from share_torch import _compress

    folded, rebuilt, spans, scales = _block(ranks, [2.0, -0.5, 1.0 / 3.0], d_out=d_out, d_in=d_in)
    before = {side: x.clone() for side, x in rebuilt.items()}
    want = [_compress.dw_abs_and_norm(a, b, *_compress.as_written(rebuilt["lora_A"][:, s:e].mT,
                                                                    rebuilt["lora_B"][:, s:e], scale, dtype))
            for (a, b), (s, e), scale, dtype in zip(folded, spans, scales, dtypes)]
    block_route = len(set(ranks)) == 1 and len(set(dtypes)) == 1
    if block_route:  # the per-pair rounding is not used there
        monkeypatch.setattr(_compress, "as_written", lambda *args: pytest.fail("pair-by-pair rounding called"))
    got = _compress.block_dw_errors(folded, rebuilt, spans, scales, dtypes)
    if block_route:
        assert got == want
    else:  # (mixed ranks are zero-padded into one batched QR: equal to rounding)
        assert got == [(pytest.approx(e, rel=1e-5), pytest.approx(n, rel=1e-5)) for e, n in want]
    assert all(torch.equal(rebuilt[side], before[side]) for side in rebuilt)
    if dtypes[0] != torch.float32 and block_route:  # the rounding is in the error: without it, other figures
        unrounded = _compress.block_dw_errors(folded, rebuilt, spans, scales, [torch.float32] * 3)
        assert all(u != g for (u, _), (g, _) in zip(unrounded, got))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_block_rounding_of_rows_is_as_written_adapter_by_adapter(dtype):
    """The rounding of a block's rows, in place, gives each adapter's `as_written` factors to the bit."""
    from share_torch import _compress

    folded, rebuilt, spans, scales = _block([4, 4, 4], [2.0, -0.5, 1.0 / 3.0])
    rows = {side: x.mT.contiguous() for side, x in rebuilt.items()}
    _compress._block_as_written(rows, spans, scales, dtype)
    for (s, e), scale in zip(spans, scales):
        a_back, b_back = _compress.as_written(rebuilt["lora_A"][:, s:e].mT, rebuilt["lora_B"][:, s:e], scale, dtype)
        assert torch.equal(rows["lora_B"][s:e], b_back.mT) and torch.equal(rows["lora_A"][s:e], a_back)


def test_block_dw_errors_take_the_pair_by_pair_route_where_spans_do_not_tile_the_columns(monkeypatch):
    """Spans out of the columns' order cannot be read as rows in order: pair by pair, with each adapter's own
    columns."""
    from share_torch import _compress

    folded, rebuilt, spans, scales = _block([4, 4, 4], [2.0, -0.5, 1.0 / 3.0])
    order = [2, 0, 1]
    want = _compress.block_dw_errors([folded[i] for i in order], rebuilt, [spans[i] for i in order],
                                     [scales[i] for i in order], [torch.bfloat16] * 3)
    calls = []
    as_written = _compress.as_written
    monkeypatch.setattr(_compress, "as_written", lambda *args: calls.append(1) or as_written(*args))
    got = _compress.block_dw_errors(folded, rebuilt, spans, scales, [torch.bfloat16] * 3)
    assert not calls and [got[i] for i in order] == want
