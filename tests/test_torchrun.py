"""Scale-out of phase 1: the same `hant-trt distill` command sharded over ranks.

The two-rank run is launched with torchrun itself
(`python -m torch.distributed.run --standalone --nproc_per_node 2 --no-python hant-trt distill ...`),
which works offline on CPU: the distill stage opens no process group, the ranks only read RANK and
WORLD_SIZE and meet in the run directory (rank 0 waits for every rank's DONE stamp and merges). The
determinism check launches the same two ranks a second time as plain subprocesses with RANK=0/1,
WORLD_SIZE=2 (rank 1 first, rank 0 a little later) and must produce byte-identical merged files.
Without torch.distributed (CPU builds without it) both launches use plain subprocesses.

Every run pins OMP_NUM_THREADS=1 (torchrun does that for its workers anyway): the sharded weights
equal the single-process ones bit for bit only at equal intra-op thread counts, because the number
of threads changes the summation order of CPU convolutions (with 2 threads against 1 the weights
differ by ~1e-5). Sharding itself changes nothing: candidates are built from one seeded sequence on
every rank, trained on the same (seed, step) batches and the same teacher activations, and every
candidate's update depends only on its own loss.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hant_trt.distill.stage import _merge_ranks
from hant_trt.rundir import RunDir

from conftest import ROOT

CONFIG = ('[teacher]\nresolution = 64\n[data]\ntrain = "embedded"\n'
          '[distill]\npreset = "tiny"\nsteps = 6\nbatch_size = 4\nresolution = 64\nslots = [1, 2]\n'
          'checkpoint_every = 3\nwarmup_steps = 2\n')
SLOTS = ("slot1", "slot2")   # slot 2 has a weightless "skip" candidate; both slots are split over ranks
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
             "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(HANT_TRT_NO_PROGRESS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def _hant_trt() -> list[str]:
    script = Path(sys.executable).with_name("hant-trt")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hant_trt.cli"]


def _distill_args(run_dir, cfg_path) -> list[str]:
    return ["distill", str(run_dir), "--config", str(cfg_path)]


def _check(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def _single(run_dir, cfg_path) -> str:
    return _check(subprocess.run(_hant_trt() + _distill_args(run_dir, cfg_path), cwd=ROOT, env=_env(),
                                 capture_output=True, text=True, timeout=900))


def _torchrun(run_dir, cfg_path) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    exe = _hant_trt()
    cmd += ["--no-python", *exe] if len(exe) == 1 else ["--module", "hant_trt.cli"]
    return _check(subprocess.run(cmd + _distill_args(run_dir, cfg_path), cwd=ROOT, env=_env(),
                                 capture_output=True, text=True, timeout=900))


def _env_ranks(run_dir, cfg_path, delay_rank0: float = 2.0) -> str:
    """Two plain processes with RANK/WORLD_SIZE; rank 1 starts first."""
    procs = []
    for rank in (1, 0):
        procs.append(subprocess.Popen(_hant_trt() + _distill_args(run_dir, cfg_path), cwd=ROOT,
                                      env=_env(RANK=str(rank), WORLD_SIZE="2"), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
        time.sleep(delay_rank0)
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        outs.append(_check(subprocess.CompletedProcess(p.args, p.returncode, out, err)))
    return outs[1]   # rank 0's


def _have_torchrun() -> bool:
    return torch.distributed.is_available()


def _meta(run_dir, slot, sub="") -> dict:
    return json.loads((Path(run_dir) / "candidates" / sub / f"{slot}.json").read_text())


@pytest.mark.slow
def test_two_ranks_shard_candidates_and_merge_to_the_single_process_result(tmp_path):
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(CONFIG)
    single, sharded, again = tmp_path / "single", tmp_path / "sharded", tmp_path / "again"
    _single(single, cfg_path)
    out = (_torchrun if _have_torchrun() else _env_ranks)(sharded, cfg_path)
    assert "16 candidates" in out   # rank 0 reports the merged count, not its own shard

    total = 0
    for slot in SLOTS:
        ref, got = _meta(single, slot), _meta(sharded, slot)
        shards = [{c["op"] for c in _meta(sharded, slot, f"rank{r}")["candidates"]} for r in (0, 1)]
        assert shards[0] and shards[1], (slot, shards)       # the slot really is split
        assert not shards[0] & shards[1], (slot, shards)     # no candidate on both ranks
        ops = [c["op"] for c in got["candidates"]]
        assert len(ops) == len(set(ops)) and ops == sorted(ops)   # each once, in a fixed order
        assert set(ops) == shards[0] | shards[1] == {c["op"] for c in ref["candidates"]}
        total += len(ops)
        # same slot record and, per candidate, the same validation MSEs (init/refit/final): every
        # rank distilled against the same teacher activations and data
        assert {k: v for k, v in got.items() if k != "candidates"} == {k: v for k, v in ref.items() if k != "candidates"}
        assert {c["op"]: c for c in got["candidates"]} == {c["op"]: c for c in ref["candidates"]}
        # the merged weights are the single-process weights, bit for bit
        w_ref = load_file(str(single / "candidates" / f"{slot}.safetensors"))
        w_got = load_file(str(sharded / "candidates" / f"{slot}.safetensors"))
        assert w_got.keys() == w_ref.keys()
        for k in w_ref:
            assert torch.equal(w_got[k], w_ref[k]), (slot, k)
    assert total == 16

    # trained, not only written, once: each rank's checkpoint holds exactly its own shard
    trained = []
    for r in (0, 1):
        ck = sharded / "candidates" / "ckpt" / f"rank{r}"
        state = json.loads((ck / "state.json").read_text())
        assert state["step"] == 6
        keys = set()
        for g in range(state["groups"]):
            keys |= set(torch.load(ck / f"g{g:03d}.s0000006.pt", weights_only=True)["modules"])
        trained.append(keys)
    assert not trained[0] & trained[1]
    assert trained[0] | trained[1] == {f"{s[4:]}:{c['op']}" for s in SLOTS
                                       for c in _meta(single, s)["candidates"] if c["has_weights"]}

    st = RunDir(sharded).stage("distill")
    assert st.status == "done" and st.info["candidates"] == 16
    assert st.fingerprint == RunDir(single).stage("distill").fingerprint

    # deterministic merge: another launch (plain RANK/WORLD_SIZE processes, other start order)
    # gives byte-identical merged files
    _env_ranks(again, cfg_path)
    for slot in SLOTS:
        for ext in (".json", ".safetensors"):
            a = (sharded / "candidates" / f"{slot}{ext}").read_bytes()
            assert (again / "candidates" / f"{slot}{ext}").read_bytes() == a, slot + ext


# -- the merge on hand-written rank outputs (fast) ----------------------------------------------

def _rank_output(run: RunDir, rank: int, slot: str, ops: list[str]) -> None:
    from hant_trt import atomic

    folder = run.root / "candidates" / f"rank{rank}"
    atomic.save_tensors(folder / f"{slot}.safetensors", {f"{op}::w": torch.full((2,), float(rank)) for op in ops})
    atomic.write_json(folder / f"{slot}.json", {"slot": slot[4:], "first": 1, "last": 1, "candidates": [
        {"op": op, "inherits": False, "mse_init": 1.0, "mse_refit": 1.0, "mse_final": 0.5, "has_weights": True}
        for op in ops]})


def test_merge_waits_for_every_rank_and_accepts_a_rank_without_candidates(tmp_path):
    run = RunDir(tmp_path / "run")
    _rank_output(run, 0, "slot1", ["b", "a"])
    # rank 1 got no candidates: it has written no folder, yet must be able to report DONE
    assert _merge_ranks(run, 2, 1, "fp") == -1
    assert _merge_ranks(run, 2, 0, "fp", timeout_s=60) == 2
    meta = json.loads((run.root / "candidates" / "slot1.json").read_text())
    assert [c["op"] for c in meta["candidates"]] == ["a", "b"]
    assert set(load_file(str(run.root / "candidates" / "slot1.safetensors"))) == {"a::w", "b::w"}


def test_merge_ignores_a_stale_done_of_another_launch(tmp_path):
    from hant_trt import atomic

    run = RunDir(tmp_path / "run")
    _rank_output(run, 0, "slot1", ["a"])
    atomic.write_json(run.root / "candidates" / "rank1" / "DONE", {"fingerprint": "old", "world": 2})
    with pytest.raises(RuntimeError, match="timed out"):
        _merge_ranks(run, 2, 0, "new", timeout_s=0.1)
    assert not (run.root / "candidates" / "slot1.json").exists()


def test_merge_refuses_a_candidate_trained_twice(tmp_path):
    run = RunDir(tmp_path / "run")
    _rank_output(run, 0, "slot1", ["a", "b"])
    _rank_output(run, 1, "slot1", ["b"])
    _merge_ranks(run, 2, 1, "fp")
    with pytest.raises(RuntimeError, match="trained more than once"):
        _merge_ranks(run, 2, 0, "fp", timeout_s=60)
