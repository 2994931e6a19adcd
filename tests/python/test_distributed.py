"""psa.distributed and diffusers' context parallelism with psa, on two gloo processes on the CPU.

The two ranks are spawned once for the module and run every case of distributed_cases.py (each
rank checks its shard against one process's result on the whole input); each test here reports
one case. The ranks meet through a file in a temporary folder (no port to pick), every collective
gives up after distributed_cases.COLLECTIVE_TIMEOUT seconds, and the ranks are killed after
SPAWN_TIMEOUT seconds, so a failure cannot hang the run. 25-50 s on 2 cores, a third of it the
imports of torch and diffusers and torch's first custom-op call in each rank.
"""

import importlib.util
import json
import multiprocessing
import os

import pytest

from helpers import torch

import distributed_cases  # noqa: E402  (after helpers: needs torch)
from psa.distributed import heads_to_sequence, sequence_to_heads, shard_lengths  # noqa: E402
from psa.distributed import ulysses_attention  # noqa: E402

SPAWN_TIMEOUT = 300
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
DIFFUSERS_CASES = {name for name in distributed_cases.CASES
                   if name.startswith(("wan_", "cogvideox"))}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("this PyTorch build has no torch.distributed")
    folder = tmp_path_factory.mktemp("distributed")
    names = [n for n in distributed_cases.CASES if HAS_DIFFUSERS or n not in DIFFUSERS_CASES]
    context = multiprocessing.get_context("spawn")
    init_file = str(folder / "rendezvous")
    ranks = [context.Process(target=distributed_cases.run, args=(r, init_file, str(folder), names))
             for r in range(distributed_cases.WORLD)]
    for rank in ranks:
        rank.start()
    timed_out = False
    for rank in ranks:
        rank.join(SPAWN_TIMEOUT)
        if rank.is_alive():
            timed_out = True
            rank.kill()
            rank.join()
    table = {}
    for r in range(distributed_cases.WORLD):
        path = folder / f"rank{r}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        for line in lines:
            entry = json.loads(line)
            table.setdefault(entry["case"], {})[r] = entry["result"]
    exit_codes = [rank.exitcode for rank in ranks]
    return table, timed_out, exit_codes


@pytest.mark.parametrize("case", distributed_cases.CASES)
def test_case(case, results):
    if case in DIFFUSERS_CASES and not HAS_DIFFUSERS:
        pytest.skip("needs diffusers")
    table, timed_out, exit_codes = results
    per_rank = table.get(case, {})
    for r in range(distributed_cases.WORLD):
        if r not in per_rank:
            pytest.fail(f"rank {r} did not report case {case} (timed out: {timed_out}, exit codes "
                        f"{exit_codes}); replay: python tests/python/distributed_cases.py OUT_DIR")
        assert per_rank[r] == "ok", f"rank {r}:\n{per_rank[r]}"


# ---- Without a process group -------------------------------------------------------------------


def test_shard_lengths_split_as_tensor_split():
    for total in (0, 1, 7, 501, 512):
        for world in (1, 2, 3, 8):
            expected = [len(part) for part in torch.arange(total).tensor_split(world)]
            assert shard_lengths(total, world) == expected
    with pytest.raises(ValueError, match="world >= 1"):
        shard_lengths(10, 0)


def test_needs_a_process_group():
    if torch.distributed.is_initialized():
        pytest.skip("a process group is initialised in this process")
    q = torch.randn(1, 2, 16, 32)
    with pytest.raises(RuntimeError, match="init_process_group"):
        ulysses_attention(q, q, q)
    with pytest.raises(RuntimeError, match="init_process_group"):
        sequence_to_heads(q, [16])
    with pytest.raises(RuntimeError, match="init_process_group"):
        heads_to_sequence(q, [16])


def test_argument_errors_come_first():
    q = torch.randn(1, 2, 16, 32)
    with pytest.raises(ValueError, match="torch tensors"):
        ulysses_attention(q.numpy(), q.numpy(), q.numpy())
    with pytest.raises(ValueError, match="k and v must have shape"):
        ulysses_attention(q, q[:, :, :8], q[:, :, :8])
    with pytest.raises(ValueError, match="causal must be a bool"):
        ulysses_attention(q, q, q, causal="yes")
    with pytest.raises(ValueError, match="scale"):
        ulysses_attention(q, q, q, scale=-1.0)
    with pytest.raises(ValueError, match="rank 4"):
        sequence_to_heads(q[0], [16])
