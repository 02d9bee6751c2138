import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from hant_trt.config import RunConfig
from hant_trt.distill.stage import run_distill, run_score
from hant_trt.scores import read_scores
from hant_trt.errors import UserError
from hant_trt.rundir import RunDir

from conftest import ROOT, run_cli


def small_cfg(run_dir, slots=(1, 4), steps=8) -> RunConfig:
    cfg = RunConfig(run_dir=str(run_dir))
    cfg.teacher.resolution = 96
    cfg.data.train = "embedded"
    cfg.distill.preset = "tiny"
    cfg.distill.steps = steps
    cfg.distill.batch_size = 4
    cfg.distill.resolution = 64
    cfg.distill.slots = list(slots)
    cfg.distill.checkpoint_every = 2
    cfg.distill.lr = 3e-3
    cfg.distill.warmup_steps = 2
    cfg.score.max_images = 8
    cfg.score.batch_size = 8
    return cfg


@pytest.mark.slow
def test_short_distillation_lowers_validation_mse_and_keep_scores_perfectly(tmp_path):
    cfg = small_cfg(tmp_path / "run", slots=(1, 4), steps=10)
    run = RunDir(cfg.run_dir)
    run_distill(run, cfg)
    t = run.stage("distill").info["timings"]      # what tools/validate_gpu.py projects phase 1 from
    assert t["plan_s"] > 0 and t["start_s"] > 0 and 0 < t["step_low_s"] < t["loop_s"]
    assert "step_full_s" not in t                 # no steps at the deploy resolution in this run
    for name in ("slot1", "slot4"):
        meta = json.loads((tmp_path / "run" / "candidates" / f"{name}.json").read_text())
        trained = [c for c in meta["candidates"] if c["mse_init"] > 1e-4 and c["has_weights"]]
        assert trained, (name, meta["candidates"])
        for c in trained:
            assert c["mse_final"] < c["mse_init"], (name, c)
    run_score(run, cfg)
    assert not (tmp_path / "run" / "score.partial.json").exists()     # a finished score leaves no sums
    rows = read_scores(tmp_path / "run" / "scores.csv")
    keeps = [r for r in rows if r.op == "keep"]
    assert len(keeps) == 16
    assert all(r.agreement == 100.0 and r.kl == 0.0 for r in keeps)
    others = [r for r in rows if r.op != "keep"]
    assert others and all(r.first in (1, 4) for r in others)
    assert len({(r.first, r.last, r.op, r.precision) for r in rows}) == len(rows)   # each scored once
    # re-running a finished stage does nothing
    st = run.stage("distill")
    run_distill(run, cfg)
    assert run.stage("distill").finished == st.finished


def _uninterrupted(tmp_path, cfg_path):
    r = run_cli("distill", str(tmp_path / "ref"), "--config", str(cfg_path),
                env={"HANT_TRT_NO_PROGRESS": "1"})
    assert r.returncode == 0, r.stderr
    return load_file(str(tmp_path / "ref" / "candidates" / "slot2.safetensors"))


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(
        '[teacher]\nresolution = 64\n[data]\ntrain = "embedded"\n'
        '[distill]\npreset = "tiny"\nsteps = 16\nbatch_size = 4\nresolution = 64\nslots = [2]\n'
        'checkpoint_every = 2\nwarmup_steps = 2\n')
    ref = _uninterrupted(tmp_path, cfg_path)
    run_dir = tmp_path / "killed"
    env = dict(os.environ, HANT_TRT_NO_PROGRESS="1", HANT_TRT_STEP_DELAY="0.3")
    p = subprocess.Popen([sys.executable, "-m", "hant_trt.cli", "distill", str(run_dir), "--config",
                          str(cfg_path)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = run_dir / "candidates" / "ckpt" / "rank0" / "state.json"
    t0 = time.time()
    while time.time() - t0 < 900 and p.poll() is None:
        if state.exists() and json.loads(state.read_text())["step"] >= 4:
            break
        time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    step = json.loads(state.read_text())["step"]
    assert 4 <= step < 16
    # without --resume: one clear line
    r = run_cli("distill", str(run_dir), "--config", str(cfg_path), env={"HANT_TRT_NO_PROGRESS": "1"})
    assert r.returncode == 2 and "--resume" in r.stderr
    r = run_cli("distill", str(run_dir), "--config", str(cfg_path), "--resume", env={"HANT_TRT_NO_PROGRESS": "1"})
    assert r.returncode == 0, r.stderr
    got = load_file(str(run_dir / "candidates" / "slot2.safetensors"))
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    # a resume directory made by another configuration → one line, exit 2
    cfg_path.write_text(cfg_path.read_text().replace("steps = 16", "steps = 20"))
    os.unlink(run_dir / "run.json")
    (run_dir / "candidates" / "slot2.json").unlink()
    r = run_cli("distill", str(run_dir), "--config", str(cfg_path), "--resume", env={"HANT_TRT_NO_PROGRESS": "1"})
    assert r.returncode == 2 and "another configuration" in r.stderr, r.stderr


def test_bad_slot_and_preset(tmp_path):
    cfg = small_cfg(tmp_path / "run", slots=(99,))
    with pytest.raises(UserError, match="out of range"):
        run_distill(RunDir(cfg.run_dir), cfg)
    cfg = small_cfg(tmp_path / "run2", slots=(1,))
    cfg.distill.preset = "huge"
    with pytest.raises(UserError, match="preset"):
        run_distill(RunDir(cfg.run_dir), cfg)


def test_suffix_kl_term_for_late_slots_only(lite0, tmp_path):
    """`distill.suffix_kl`: late-slot candidates also learn the teacher's logits through the
    teacher's (frozen) rest; earlier ones keep the plain normalised MSE."""
    from hant_trt.teacher.capture import capture, normalised_mse
    from hant_trt.distill.stage import distill_fingerprint
    from hant_trt.distill.train import Job, job_loss
    from hant_trt.ops import build
    from hant_trt.teacher.decompose import decompose

    import copy

    from hant_trt.teacher.capture import teacher_modules_eval

    teacher = copy.deepcopy(lite0.model)
    d = decompose(teacher, 96)
    teacher_modules_eval(d)          # as `distill` does
    cfg = small_cfg(tmp_path)
    cfg.distill.suffix_kl, cfg.distill.suffix_kl_slots = 1.0, 2
    n = len(d.slots)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    acts, logits = capture(d, x)
    for i, expect_kl in ((n - 1, True), (n - 4, False)):
        s = d.slots[i]
        m = build(f"ir_k3_e2_{s.act}", s)
        j = Job(i, i, "ir_k3_e2", m, False, s)
        out = m(acts[i])
        loss = job_loss(d, j, out, acts, logits, cfg.distill)
        mse = normalised_mse(out, acts[i + 1])
        assert (float(loss) > float(mse) + 1e-6) is expect_kl
        loss.backward()
        assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())        # the teacher stays frozen
    # runs without the option keep their fingerprint whatever suffix_kl_slots says
    a, b = small_cfg(tmp_path), small_cfg(tmp_path)
    b.distill.suffix_kl_slots = 7
    assert distill_fingerprint(a) == distill_fingerprint(b)
    b.distill.suffix_kl = 0.5
    assert distill_fingerprint(a) != distill_fingerprint(b)


def test_span_jobs_inherit_and_only_spans(lite0_decomposition, tmp_path):
    """With `distill.spans`, fused candidates are planned only where they inherit the span's blocks;
    `only_spans` plans them alone (fusion added to a run whose slots are distilled)."""
    from hant_trt.distill.train import plan_jobs

    d = lite0_decomposition
    cfg = small_cfg(tmp_path, slots=(0, 1, 2, 3))
    cfg.distill.spans = 2
    jobs = plan_jobs(d, cfg.distill)
    spans = [j for j in jobs if j.first != j.last]
    assert {(j.first, j.last) for j in spans} == {(1, 2), (2, 3)}   # (0, 1): no block to inherit
    assert spans and all(j.inherits for j in spans)
    assert {j.op for j in spans} == {"ir_k3_e4_relu6", "ir_k3_e8_relu6", "ir_k5_e4_relu6", "ir_k5_e8_relu6"}
    only = plan_jobs(d, cfg.distill, only_spans=True)
    assert [(j.first, j.last, j.op) for j in only] == [(j.first, j.last, j.op) for j in spans]
    one = plan_jobs(d, cfg.distill, only_spans=True, only_ops={"ir_k3_e8_relu6"})
    assert [(j.first, j.last, j.op) for j in one] == [(1, 2, "ir_k3_e8_relu6")]


def test_span_op_that_does_not_fit_its_blocks_is_not_planned(lite0_decomposition, tmp_path):
    """A preset may list a teacher-bound span op (`es`) for every span: where the blocks refuse it
    (span 2-3 starts with a residual block) it is left out, where they fit (0-1) it is planned."""
    from hant_trt.distill.train import plan_jobs
    from hant_trt.ops import PRESETS, register_preset

    if "test_tiny_es" not in PRESETS:
        register_preset("test_tiny_es")(lambda slot: PRESETS["tiny"](slot) + (["es"] if slot.kind == "span" else []))
    cfg = small_cfg(tmp_path, slots=(0, 1, 2, 3))
    cfg.distill.spans, cfg.distill.preset = 2, "test_tiny_es"
    jobs = plan_jobs(lite0_decomposition, cfg.distill, only_spans=True)
    assert [(j.first, j.last) for j in jobs if j.op == "es"] == [(0, 1)]


def test_fisher_weights_estimate_the_kl_curvature(lite0, tmp_path):
    """`capture_fisher`: the same activations as `capture`, no gradient left in the teacher, seeded
    labels; averaged over sampled labels its weight at an element is the diagonal Fisher entry
    Σ_y p_y (∂ log p_y / ∂h)², and ½ F δ² predicts the KL a small error δ there causes."""
    import copy

    from hant_trt.teacher.capture import capture, capture_fisher, fisher_mse, normalised_mse, suffix, teacher_modules_eval
    from hant_trt.distill.stage import distill_fingerprint
    from hant_trt.distill.train import Job, job_loss
    from hant_trt.ops import build
    from hant_trt.teacher.decompose import decompose

    teacher = copy.deepcopy(lite0.model)
    d = decompose(teacher, 96)
    teacher_modules_eval(d)
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    acts, logits = capture(d, x)
    a2, l2, w = capture_fisher(d, x, seed=3)
    assert torch.equal(l2, logits) and all(torch.equal(p, q) for p, q in zip(acts, a2))
    assert w[0] is None and all(v.shape == a.shape and float(v.min()) >= 0 for v, a in zip(w[1:], acts[1:]))
    assert all(p.grad is None for p in teacher.parameters())
    assert torch.equal(capture_fisher(d, x, seed=3)[2][5], w[5])

    i = len(d.slots) - 2                          # a late slot: the output of block i feeds block i+1
    h = acts[i + 1]
    n = 400
    _, _, wb = capture_fisher(d, x.expand(n, -1, -1, -1).contiguous(), seed=0)
    e = int(wb[i + 1].mean(0).flatten().argmax())
    # exact diagonal Fisher entry at element e, by central differences of log p
    eps = 1e-3
    def logp(delta):
        hh = h.clone().flatten()
        hh[e] += delta
        return torch.log_softmax(suffix(d, hh.view_as(h), i + 1).double(), 1)[0]
    lp0 = logp(0.0)
    jac = (logp(eps) - logp(-eps)) / (2 * eps)
    f_ee = float((lp0.exp() * jac ** 2).sum())
    mc = float(wb[i + 1].flatten(1)[:, e].mean()) / 4096.0 ** 2
    assert 0.7 * f_ee < mc < 1.3 * f_ee, (mc, f_ee)
    delta = 0.1 / f_ee ** 0.5                       # KL ≈ 0.005: small enough for the quadratic
    kl = float((lp0.exp() * (lp0 - logp(delta))).sum())
    assert 0.8 < kl / (0.5 * f_ee * delta ** 2) < 1.2

    # the job loss mixes plain and Fisher-weighted MSE by distill.fisher
    cfg = small_cfg(tmp_path)
    cfg.distill.fisher = 0.25
    s = d.slots[i]
    m = build(f"ir_k3_e2_{s.act}", s)
    out = m(acts[i])
    loss = job_loss(d, Job(i, i, "ir_k3_e2", m, False, s), out, acts, logits, cfg.distill, w)
    expect = 0.75 * normalised_mse(out, acts[i + 1]) + 0.25 * fisher_mse(out, acts[i + 1], w[i + 1])
    assert torch.allclose(loss, expect)
    a, b = small_cfg(tmp_path), small_cfg(tmp_path)
    assert distill_fingerprint(a) == distill_fingerprint(b)
    b.distill.fisher = 0.5
    assert distill_fingerprint(a) != distill_fingerprint(b)


def test_add_spans_takes_distill_settings_only(tmp_path):
    """tools/add_spans.py: --set outside distill.* and a bad --slots are one line and exit 2."""
    tool = str(ROOT / "tools" / "add_spans.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, tool, str(tmp_path / "a"), str(tmp_path / "b"), "--set", "build.finetune_steps=3"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.strip() == "error: --set takes distill.KEY=VALUE only"
    r = subprocess.run([sys.executable, tool, str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_extend_run_trains_only_the_new_candidates(tmp_path):
    """`distill.align` on a distilled run (`distill.extend`): the candidates both sets list are
    SRC's tensors unchanged, the misaligned ones are gone, only the new ones train, and DST's
    stage is done under the new fingerprint — the same candidates a fresh distillation with the
    new set trains (those that inherit the teacher: the same weights). Settings that change how
    candidates train are refused."""
    import copy

    from hant_trt.distill.extend import extend_run
    from hant_trt.distill.stage import distill_fingerprint

    cfg = small_cfg(tmp_path / "src", slots=(2,), steps=4)
    run = RunDir(cfg.run_dir)
    run.update(config=cfg.to_dict())        # as the CLI saves it
    run_distill(run, cfg)
    src = load_file(str(tmp_path / "src" / "candidates" / "slot2.safetensors"))
    new = copy.deepcopy(cfg)
    new.distill.align = 16
    info = extend_run(tmp_path / "src", tmp_path / "dst", new)
    meta = json.loads((tmp_path / "dst" / "candidates" / "slot2.json").read_text())
    ops = {c["op"] for c in meta["candidates"]}
    assert "ir_k3_e5_relu6" not in ops and {"ir_k3_e4.67_relu6", "ir_k3_e5.33_relu6", "ir_k3_e4_relu6"} <= ops
    got = load_file(str(tmp_path / "dst" / "candidates" / "slot2.safetensors"))
    reused = [k for k in got if k.split("::")[0] in {k2.split("::")[0] for k2 in src}]
    assert reused and all(torch.equal(got[k], src[k]) for k in reused)
    assert not any(k.startswith("ir_k3_e5_relu6::") for k in got)
    assert info["candidates"] == len(ops) and 0 < info["note"].count("trained")
    dst_run = RunDir(tmp_path / "dst", create=False)
    assert dst_run.is_done("distill", distill_fingerprint(new)) and not (tmp_path / "dst" / "extend_work").exists()
    fresh = copy.deepcopy(new)
    fresh.run_dir = str(tmp_path / "fresh")
    run_distill(RunDir(fresh.run_dir), fresh)
    ref = load_file(str(tmp_path / "fresh" / "candidates" / "slot2.safetensors"))
    assert ref.keys() == got.keys()
    for k in ("ir_k3_e4.67_relu6::conv_pw.weight", "ir_k3_e5.33_relu6::conv_pwl.weight"):
        assert torch.allclose(got[k], ref[k], atol=1e-6), k
    other = copy.deepcopy(cfg)
    other.distill.steps = 6
    with pytest.raises(UserError, match="distill.steps"):
        extend_run(tmp_path / "src", tmp_path / "dst2", other)


def test_a_killed_score_resumes_from_its_sums_and_ends_where_an_uninterrupted_one_does(tmp_path):
    import copy

    from hant_trt.distill.pool import TrainedPart
    from hant_trt.distill.score import score_candidates
    from hant_trt.teacher.decompose import decompose
    from hant_trt.teacher.load import load_teacher

    d = decompose(load_teacher("efficientnet_lite0", "default", 64).model, 64)
    g = torch.Generator().manual_seed(0)
    entries = []
    for i in (1, 4):                                  # the teacher's blocks, perturbed: scores below 100 %
        m = copy.deepcopy(d.blocks[i]).eval()
        for p in m.parameters():
            p.data += 0.3 * p.data.std() * torch.randn(p.shape, generator=g)
        entries.append(TrainedPart(f"{i}:noisy", i, i, "noisy", m))
    batches = [(torch.randn(4, 3, 64, 64, generator=g), torch.randint(0, 1000, (4,), generator=g)) for _ in range(4)]
    whole = score_candidates(d, entries, batches, labelled=True)

    def killed_after(n):
        for b, item in enumerate(batches):
            if b == n:
                raise KeyboardInterrupt
            yield item

    ck = tmp_path / "score.partial.json"
    with pytest.raises(KeyboardInterrupt):
        score_candidates(d, entries, killed_after(2), labelled=True, checkpoint=ck, fingerprint="fp", every_s=0)
    assert json.loads(ck.read_text())["batches"] == 2
    assert score_candidates(d, entries, batches, labelled=True, checkpoint=ck, fingerprint="fp") == whole
    # sums of other settings are not resumed: a wrong start would show in the figures
    st = json.loads(ck.read_text())
    st["accs"] = {k: {**v, "agree": 10 ** 6} for k, v in st["accs"].items()}
    ck.write_text(json.dumps(st))
    assert score_candidates(d, entries, batches, labelled=True, checkpoint=ck, fingerprint="other") == whole
    assert score_candidates(d, entries, batches, labelled=True, checkpoint=ck, fingerprint="fp") != whole
