"""fxprune under torch.distributed: 2 gloo processes on CPU, spawned by the tests.

The plan and the pruned weights from 2 ranks x half the calibration batches must equal
those of 1 process x all of them (submodular's Grams and Taylor's scores are summed over
the ranks); bad input on one rank must raise a ``DistributedError`` on every rank, never
hang. Workers rendezvous through a file store in the test's tmp dir (no port race) with a
30 s collective timeout, and the parent kills them after ``DEADLINE`` seconds.
"""
from __future__ import annotations

import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fxprune
from fxprune import distributed
from fxprune.errors import DistributedError, InputError
from fxprune.passes import Submodular, Taylor

WORLD = 2
DEADLINE = 150.0  # seconds for a whole spawned job (start-up included) before the test fails
BATCHES = 4  # calibration batches; rank r gets batches r, r + 2


# ---------------------------------------------------------------- model and data

class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(8 * 16, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.flatten(self.pool(x), 1)
        return self.fc2(torch.relu(self.fc1(x)))


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SmallNet().eval()


def make_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 1, 12, 12, generator=g), torch.randint(0, 10, (6,), generator=g)) for _ in range(BATCHES)]


EXAMPLE = torch.zeros(2, 1, 12, 12)
CASES = {  # name -> (method, options)
    "submodular-asym": ("submodular", {"variant": "asym"}),
    "submodular-layer": ("submodular", {"variant": "layer"}),
    "taylor": ("taylor", {}),
    "snip": ("snip", {}),
    "grasp": ("grasp", {}),
}


def prune(case: str, data: list, model: nn.Module | None = None, sparsity: float = 0.5) -> fxprune.Result:
    method, options = CASES[case]
    return fxprune.compile(model if model is not None else make_model(), EXAMPLE, method, sparsity,
                           data=data, validate=False, progress=False, **options)


# ---------------------------------------------------------------- spawning

def _worker(rank: int, store: str, out: str, job: str) -> None:
    """One rank: join the group, run ``job``, save what it returns (or the traceback)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=30))
    try:
        result = JOBS[job](rank)
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        result = {"crash": traceback.format_exc()}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def spawn(job: str, tmp_path: Path) -> list[dict]:
    """Run ``JOBS[job]`` on 2 gloo ranks; their results in rank order. Fails (never hangs)
    when a rank crashes or the job passes ``DEADLINE``."""
    ctx = mp.start_processes(_worker, args=(str(tmp_path / "store"), str(tmp_path), job), nprocs=WORLD,
                             join=False, start_method="spawn")
    end = time.monotonic() + DEADLINE
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > end:
                pytest.fail(f"distributed job {job!r} still running after {DEADLINE} s (a hang)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r} crashed:\n{res['crash']}"
    return results


# ---------------------------------------------------------------- jobs (run on every rank)

def _job_calibrate(rank: int) -> dict:
    """Every case on this rank's half of the batches."""
    shard = distributed.shard(make_data())
    assert len(shard) == BATCHES // WORLD
    out = {}
    for case in CASES:
        result = prune(case, shard)
        out[case] = {"plan": result.plan, "state": {k: v.clone() for k, v in result.module.state_dict().items()}}
    return out


def _outcome(fn) -> tuple[str, str]:
    """(error class name, message) of ``fn()``, or ("ok", "")."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test compares the class on every rank
        return type(exc).__name__, str(exc)
    return "ok", ""


def _job_bad_input(rank: int) -> dict:
    """Each scenario breaks one rank's input; every rank records what it raised."""
    data = distributed.shard(make_data())
    out = {
        "empty shard (submodular)": _outcome(lambda: prune("submodular-asym", data if rank == 0 else [])),
        "empty shard (taylor)": _outcome(lambda: prune("taylor", data if rank == 0 else [])),
        "options differ": _outcome(lambda: prune("submodular-layer", data, sparsity=0.5 if rank == 0 else 0.25)),
        "weights differ": _outcome(lambda: prune("submodular-asym", data, model=make_model(seed=rank))),
        "taylor options differ": _outcome(lambda: prune("taylor", data, sparsity=0.5 if rank == 0 else 0.25)),
        "bad batch on rank 1": _outcome(lambda: prune(
            "submodular-asym", data if rank == 0 else [(torch.zeros(3, 1, 5, 5), None)])),
    }
    if rank == 0:  # pruning on one rank alone: no collective may run (rank 1 does not call fxprune)
        with distributed.local_only():
            out["local_only on rank 0"] = _outcome(lambda: prune("submodular-layer", data))
    # the group is still in step after the errors: a last run succeeds on both ranks
    out["after the errors"] = _outcome(lambda: prune("submodular-layer", data))
    return out


def _itpcc_run(rank: int, wrap: bool) -> dict:
    """ITPCC in a loop of one's own: the prepared module (wrapped in DDP when ``wrap``) trained
    on this rank's batches with rank-dependent gate noise, then finalized on every rank."""
    from torch.nn.parallel import DistributedDataParallel

    prepared = fxprune.prepare(make_model(), EXAMPLE, method="itpcc", sparsity=0.5)
    prepared.module.train()
    net = DistributedDataParallel(prepared.module) if wrap else prepared.module
    opt = torch.optim.SGD(prepared.parameter_groups(lr_gates=0.05), lr=0.05)
    torch.manual_seed(100 + rank)  # the gates' noise differs per rank, as in a real run
    for x, y in distributed.shard(make_data()) * 3:
        loss = nn.functional.cross_entropy(net(x), y) + prepared.regularizer(num_batches=2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gated = {k: v.detach().clone() for k, v in prepared.module.state_dict().items()}
    result = prepared.finalize(threshold="target", validate=False)
    return {"gated": gated, "plan": result.plan, "state": {k: v.clone() for k, v in result.module.state_dict().items()}}


def _job_itpcc(rank: int) -> dict:
    return {"ddp": _itpcc_run(rank, wrap=True), "no_ddp": _itpcc_run(rank, wrap=False)}


def _job_all(rank: int) -> dict:
    """Every job in one spawn (process start-up is most of the cost on 2 cores)."""
    return {"calibrate": _job_calibrate(rank), "bad_input": _job_bad_input(rank), "itpcc": _job_itpcc(rank)}


JOBS = {"calibrate": _job_calibrate, "bad_input": _job_bad_input, "itpcc": _job_itpcc, "all": _job_all}


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> list[dict]:
    return spawn("all", tmp_path_factory.mktemp("distributed"))


@pytest.fixture(scope="module")
def calibrated(spawned) -> list[dict]:
    return [res["calibrate"] for res in spawned]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_on_halves_equal_one_process_on_all(calibrated, case):
    single = prune(case, make_data())
    for rank, res in enumerate(calibrated):
        got = res[case]
        assert got["plan"] == single.plan, f"rank {rank}"
        want = single.module.state_dict()
        assert got["state"].keys() == want.keys()
        for k, v in want.items():
            torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-6, msg=f"rank {rank} {k}")
    a, b = (res[case]["state"] for res in calibrated)
    assert all(torch.equal(a[k], b[k]) for k in a), "the ranks' pruned weights are not identical"
    # rank 0's shard alone gives another plan: the equality above needs the sum over the ranks
    assert prune(case, make_data()[0::2]).plan != single.plan


@pytest.fixture(scope="module")
def bad_input(spawned) -> list[dict]:
    return [res["bad_input"] for res in spawned]


@pytest.mark.slow
@pytest.mark.parametrize("scenario,needle", [
    ("empty shard (submodular)", "rank(s) [1] have an empty shard"),
    ("empty shard (taylor)", "rank(s) [1] have an empty shard"),
    ("options differ", "ranks disagree on the options of submodular"),
    ("weights differ", "ranks disagree on the weights of the model"),
    ("taylor options differ", "ranks disagree on the options of taylor"),
])
def test_bad_input_on_one_rank_raises_on_every_rank(bad_input, scenario, needle):
    for rank, res in enumerate(bad_input):
        name, message = res[scenario]
        assert name == "DistributedError", f"rank {rank}: {name}: {message}"
        assert needle in message, f"rank {rank}: {message}"


@pytest.mark.slow
def test_a_bad_batch_fails_its_rank_and_the_others(bad_input):
    (name0, msg0), (name1, msg1) = (res["bad batch on rank 1"] for res in bad_input)
    assert name1 == "InputError" and "has shape (3, 1, 5, 5)" in msg1
    assert name0 == "DistributedError" and "failed on rank 1" in msg0 and "has shape (3, 1, 5, 5)" in msg0


@pytest.mark.slow
def test_ranks_stay_in_step_after_errors(bad_input):
    assert [res["after the errors"] for res in bad_input] == [("ok", "")] * WORLD


@pytest.mark.slow
def test_local_only_prunes_on_one_rank_without_collectives(bad_input):
    assert bad_input[0]["local_only on rank 0"] == ("ok", "")
    assert "local_only on rank 0" not in bad_input[1]


# ---------------------------------------------------------------- single process: helpers are no-ops

def test_helpers_without_a_process_group_are_identities():
    t = torch.arange(4.0)
    assert not distributed.is_distributed() and distributed.world() == (0, 1) and distributed.is_main()
    assert distributed.all_reduce_sum(t) is t
    assert distributed.broadcast_plan({"a": [1, 2]}) == {"a": [1, 2]}
    assert distributed.shard(list(range(5)), rank=1, size=2) == [1, 3]
    distributed.check_consistent(make_model(), Taylor(), "taylor")  # nothing to compare with
    with pytest.raises(InputError, match="is empty"):
        prune("submodular-layer", [])


def test_options_text_ignores_data_and_progress():
    a = Submodular(data=[1], progress=True)
    b = Submodular(data=[2], progress=False)
    c = Submodular(sparsity=0.25)
    assert distributed.options_text(a) == distributed.options_text(b) != distributed.options_text(c)


def test_model_fingerprints_see_shapes_and_weights():
    a, b = make_model(0), make_model(1)
    assert distributed.model_structure(a) == distributed.model_structure(b)
    assert distributed.model_values(a) != distributed.model_values(b)
    assert distributed.model_values(a) == distributed.model_values(make_model(0))
    assert isinstance(DistributedError("x"), fxprune.FxpruneError)


# ---------------------------------------------------------------- training-time: ITPCC under DDP

def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_itpcc_under_ddp_ends_with_identical_models(spawned):
    (r0, r1) = (res["itpcc"] for res in spawned)
    init = fxprune.prepare(make_model(), EXAMPLE, method="itpcc", sparsity=0.5).module.state_dict()
    assert any(not torch.equal(r0["ddp"]["gated"][k], init[k]) for k in init), "training changed nothing"
    assert any("log_alpha" in k for k in r0["ddp"]["gated"])  # the gates' state is compared too
    assert _same(r0["ddp"]["gated"], r1["ddp"]["gated"]), "weights, gates or buffers differ across ranks"
    assert r0["ddp"]["plan"] == r1["ddp"]["plan"]
    assert _same(r0["ddp"]["state"], r1["ddp"]["state"])
    # without DDP the same loop diverges: the comparison above can fail
    assert not _same(r0["no_ddp"]["gated"], r1["no_ddp"]["gated"])
