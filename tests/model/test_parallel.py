"""Modules compressed side by side on the CPU (share_torch._parallel): the same result every run, bit for bit the
one-thread checkpoint (LAPACK's restricted eigensolver included, with SciPy's BLAS held at one thread for the
workers), torch's thread count restored, errors raised with the rest of the work cancelled."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import share_core._linalg as linalg

from share_torch import InvalidAdapterError, SHAREModel
from share_torch import _build
from share_torch._parallel import IN_FLIGHT_BYTES, module_workers, ordered_map

from .conftest import save_adapter


@pytest.fixture(scope="module")
def llama_adapters(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("llama")  # 2 layers x 4 projections: 8 modules
    return [save_adapter(root / f"task{i}", kind="llama", seed=i, r=4, alpha=8) for i in range(5)]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _process_threads() -> int:
    """torch's thread count as a newly started thread finds it: the process-wide count that the workers'
    set_num_threads(1) lowers (the main thread's own OpenMP count stays as it was either way)."""
    seen: list[int] = []
    probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    return seen[0]


def _threads_used(monkeypatch) -> set[str]:
    """Names of the threads that run `finish_module` (recorded, then the real one runs)."""
    names: set[str] = set()
    real = _build.finish_module

    def recording(*args, **kwargs):
        names.add(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(_build, "finish_module", recording)
    return names


def _one_thread(fn):
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(2)


@pytest.mark.parametrize("options", [
    {"num_components": 3},
    {"num_components": 3, "layer_by_layer": True},
    {"max_error": 0.5},
    {"num_components": 3, "leave_one_out": True},
], ids=["k", "layer-by-layer", "max-error", "leave-one-out"])
def test_parallel_modules_give_the_one_thread_checkpoint_bit_for_bit(llama_adapters, two_threads, monkeypatch,
                                                                      tmp_path, options):
    names = _threads_used(monkeypatch)
    parallel = SHAREModel.from_adapters(llama_adapters, **options)
    assert torch.get_num_threads() == 2 and _process_threads() == 2
    assert len({n for n in names if n.startswith("lorashare")}) == 2, names  # both workers took modules
    names.clear()
    alone = _one_thread(lambda: SHAREModel.from_adapters(llama_adapters, **options))
    assert names == {threading.current_thread().name}  # one thread: the plain loop
    # each worker's operators are single-threaded, as the one-thread run's are: the same numbers exactly
    parallel.save_pretrained(tmp_path / "parallel")
    alone.save_pretrained(tmp_path / "alone")
    files = sorted(p.relative_to(tmp_path / "alone") for p in (tmp_path / "alone").rglob("*.safetensors"))
    assert files == sorted(p.relative_to(tmp_path / "parallel") for p in (tmp_path / "parallel").rglob("*.safetensors"))
    for file in files:
        one, two = load_file(tmp_path / "parallel" / file), load_file(tmp_path / "alone" / file)
        assert one.keys() == two.keys()
        for key in one:
            assert torch.equal(one[key], two[key]), key
    assert parallel.stats() == alone.stats()
    for name in parallel.adapter_names:
        rebuilt, reference = parallel.reconstruct(name), alone.reconstruct(name)
        assert all(torch.equal(rebuilt[key], reference[key]) for key in reference)


def test_a_corrupt_module_read_by_a_worker_raises_and_restores_torch_threads(llama_adapters, two_threads, tmp_path):
    """Under layer_by_layer the workers read the files: a NaN there is reported as without workers."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(llama_adapters[0], bad)
    weights = load_file(bad / "adapter_model.safetensors")
    key = sorted(k for k in weights if "layers.1." in k and "lora_A" in k)[0]
    weights[key][0, 0] = float("nan")
    save_file(weights, bad / "adapter_model.safetensors")
    with pytest.raises(InvalidAdapterError, match="NaN"):
        SHAREModel.from_adapters([*llama_adapters[1:], bad], num_components=3, layer_by_layer=True)
    assert torch.get_num_threads() == 2 and _process_threads() == 2


def test_ordered_map_keeps_order_and_cancels_what_has_not_started_after_an_error(two_threads):
    def slow_square(i: int) -> int:
        time.sleep(0.002 * (i % 3))  # finishing out of order
        return i * i

    assert list(ordered_map(slow_square, list(range(20)), 2)) == [(i, i * i) for i in range(20)]
    started: list[int] = []

    def failing(i: int) -> int:
        started.append(i)
        time.sleep(0.01)
        if i == 1:
            raise ValueError("module 1 failed")
        return i

    with pytest.raises(ValueError, match="module 1 failed"):
        list(ordered_map(failing, list(range(50)), 2))
    assert len(started) < 10, started  # the queued items were cancelled, not run
    assert torch.get_num_threads() == 2 and _process_threads() == 2


def test_ordered_map_restores_threads_when_the_consumer_stops_early(two_threads):
    results = ordered_map(lambda i: i, list(range(10)), 2)
    assert next(results) == (0, 0)
    results.close()
    assert torch.get_num_threads() == 2 and _process_threads() == 2


def test_module_workers_follow_threads_memory_and_device():
    small = 4 * 2**20  # one module of 8 Llama-7B-shaped adapters, float32
    assert module_workers(torch.device("cpu"), small, 128, threads=2) == 2
    assert module_workers(torch.device("cpu"), small, 128, threads=16) == 16
    assert module_workers(torch.device("cpu"), small, 1, threads=16) == 1  # one module: nothing to share
    assert module_workers(torch.device("cpu"), small, 128, threads=1) == 1  # the user's torch.set_num_threads(1)
    assert module_workers(torch.device("cpu"), IN_FLIGHT_BYTES // 3, 128, threads=16) == 3
    assert module_workers(torch.device("cpu"), 2 * IN_FLIGHT_BYTES, 128, threads=16) == 1  # N = 1000: alone
    assert module_workers(torch.device("cuda"), small, 128, threads=16) == 1  # one stream: the plain loop


@pytest.fixture(scope="module")
def wide_adapters(tmp_path_factory) -> list:
    """40 rank-8 adapters on a 1-layer Llama of hidden size 256: q_proj's sides stack 320 columns of 256 rows,
    so their bases come from 256 x 256 scatter matrices, the size where the eigensolver takes
    LAPACK's restricted route (share_core._linalg.eigh_leading), in the module workers too."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("wide")
    config = LlamaConfig(vocab_size=32, hidden_size=256, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    shared = torch.randn(6, 256)  # a subspace the adapters share, plus their own noise
    folders = []
    for i in range(40):
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    p.copy_(torch.randn(8, 6) @ shared + 0.3 * torch.randn_like(p))
                elif "lora_B" in name:
                    p.mul_(0.3)
        model.save_pretrained(root / f"task{i}")
        base = model.unload()
        folders.append(root / f"task{i}")
    return folders


def _eigh_leading_routes(monkeypatch) -> list[str]:
    """Names of the threads whose `eigh_leading` took the restricted route (recorded, then the real one runs)."""
    taken: list[str] = []
    real = linalg._restricted

    def recording(*args):
        taken.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(linalg, "_restricted", recording)
    return taken


def test_parallel_compression_takes_lapacks_restricted_route_in_the_workers_and_gives_the_one_thread_bits(
        wide_adapters, two_threads, monkeypatch):
    restricted = _eigh_leading_routes(monkeypatch)
    runs = [SHAREModel.from_adapters(wide_adapters, num_components=32) for _ in range(2)]
    # the main thread holds SciPy's BLAS at one thread for the workers (share_core._linalg.restricted_route_for_threads)
    assert restricted and all(name.startswith("lorashare") for name in restricted), restricted
    assert linalg._threads_held == 0  # and lets go afterwards
    restricted.clear()
    alone = _one_thread(lambda: SHAREModel.from_adapters(wide_adapters, num_components=32))
    assert restricted and set(restricted) == {threading.main_thread().name}
    # the same eigensolver with one BLAS thread in every run, parallel or not: the same bits
    for run in runs:
        assert run.stats() == alone.stats()
        for name in alone.adapter_names:
            one, two = run.reconstruct(name), alone.reconstruct(name)
            assert all(torch.equal(one[key], two[key]) for key in one), name


def _scatter(seed: int = 0) -> torch.Tensor:
    x = torch.randn(256, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x @ x.mT


def test_other_threads_take_the_restricted_route_only_while_the_main_thread_holds_blas(monkeypatch):
    taken = _eigh_leading_routes(monkeypatch)
    blas = linalg._scipy_lapack()[2]
    before = [lib["num_threads"] for lib in blas.info()]
    s = _scatter()
    full_w, full_v = linalg.eigh(s)

    def in_a_thread():
        out: list = []
        worker = threading.Thread(target=lambda: out.append(linalg.eigh_leading(s, 8)), name="probe")
        worker.start()
        worker.join()
        return out[0]

    w, v = in_a_thread()
    assert taken == []  # no hold: the full eigh
    with linalg.restricted_route_for_threads() as held:
        assert held and [lib["num_threads"] for lib in blas.info()] == [1] * len(before)
        w_held, v_held = in_a_thread()
    assert taken == ["probe"]
    assert linalg._threads_held == 0 and [lib["num_threads"] for lib in blas.info()] == before  # restored
    for got_w, got_v in ((w, v), (w_held, v_held)):
        assert torch.allclose(got_w, full_w, rtol=0, atol=1e-10 * float(full_w[0]))
        assert torch.allclose(got_v, full_v[:, :8], atol=1e-8)


def test_a_hold_asked_for_outside_the_main_thread_changes_nothing(monkeypatch):
    taken = _eigh_leading_routes(monkeypatch)
    s = _scatter(1)
    seen: list = []

    def from_a_thread():
        with linalg.restricted_route_for_threads() as held:
            seen.append((held, linalg._threads_held))
            linalg.eigh_leading(s, 8)

    worker = threading.Thread(target=from_a_thread, name="asker")
    worker.start()
    worker.join()
    assert seen == [(False, 0)] and taken == []


def test_ordered_map_opens_the_restricted_route_to_its_workers_when_asked(two_threads, monkeypatch):
    taken = _eigh_leading_routes(monkeypatch)
    matrices = [_scatter(seed) for seed in range(4)]
    list(ordered_map(lambda s: linalg.eigh_leading(s, 8), matrices, 2))
    assert taken == []  # not asked: the workers decompose fully
    parallel = [v for _, (_, v) in ordered_map(lambda s: linalg.eigh_leading(s, 8), matrices, 2, hold_blas=True)]
    assert len(taken) == 4 and all(name.startswith("lorashare") for name in taken), taken
    assert linalg._threads_held == 0
    taken.clear()
    alone = [linalg.eigh_leading(s, 8)[1] for s in matrices]
    assert taken == [threading.main_thread().name] * 4
    assert all(torch.equal(one, two) for one, two in zip(parallel, alone))  # one BLAS thread either way


def test_holds_nest_and_may_close_in_any_order():
    blas = linalg._scipy_lapack()[2]
    before = [lib["num_threads"] for lib in blas.info()]
    first, second = linalg.restricted_route_for_threads(), linalg.restricted_route_for_threads()
    assert first.__enter__() and second.__enter__()
    first.__exit__(None, None, None)  # the first closes first: the second still holds
    assert linalg._threads_held == 1 and [lib["num_threads"] for lib in blas.info()] == [1] * len(before)
    second.__exit__(None, None, None)
    assert linalg._threads_held == 0 and [lib["num_threads"] for lib in blas.info()] == before


def test_blas_is_held_only_for_sets_whose_stacks_can_reach_the_restricted_route(llama_adapters, wide_adapters,
                                                                                 two_threads, monkeypatch):
    """Holding imports SciPy (about 0.25 s in a fresh process): 5 adapters of rank 4 stack 20 columns, far below
    LEADING_MIN_SIZE, so no hold; 40 of rank 8 stack 320."""
    from share_torch import _parallel

    holds = []
    real = _parallel.restricted_route_for_threads

    def recording():
        holds.append(1)
        return real()

    monkeypatch.setattr(_parallel, "restricted_route_for_threads", recording)
    SHAREModel.from_adapters(llama_adapters, num_components=3)
    assert holds == []
    SHAREModel.from_adapters(wide_adapters, num_components=32)
    assert holds == [1]
