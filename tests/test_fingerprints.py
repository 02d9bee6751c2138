"""Every stage's fingerprint for fixed configurations and input files, pinned: a saved run stays
done only while the fingerprints of an unchanged configuration and unchanged inputs stay these
strings. A change here makes every saved run redo that stage and those after it.

Session 14 changed the build's pins on purpose: `build.ce_weight`'s default went 0.5 → 2. A saved
run keeps the value its run.json names (0.5), so only configurations that leave it unset rebuild.
Session 17 changed them again: `build.full_res_steps`' default went 0 → 300; a run saved before
names no value, so it rebuilds unless its configuration sets 0."""

from __future__ import annotations

import pytest

from hant_trt.config import RunConfig
from hant_trt.deploy.stage import build_fingerprint
from hant_trt.distill.stage import distill_fingerprint, score_fingerprint
from hant_trt.latency.stage import profile_fingerprint
from hant_trt.rundir import RunDir
from hant_trt.search.stage import search_fingerprint
from hant_trt.teacher.stage import teacher_fingerprint

PINNED = {
    "plain": {"teacher": "98f8e8e6e6ad1a3a", "distill": "f9da06a3975a7077", "score": "e3ca4f1572f6bb4a", "profile": "5b41a9f227c62fc6", "search": "d81afc4f58c01eb1", "build": "08e9158e144080c7"},
    "plain+fixed": {"teacher": "98f8e8e6e6ad1a3a", "distill": "f9da06a3975a7077", "score": "e3ca4f1572f6bb4a", "profile": "5b41a9f227c62fc6", "search": "d88a009009e52ccc", "build": "05d24f9720949034"},
    "tuned": {"teacher": "94088a8da8eaf9a0", "distill": "49d88356e89ba3b1", "score": "1ab078ba35a48af8", "profile": "f0fd23314c874cc1", "search": "78ab1496bd068071", "build": "644f9fb3823128cb"},
    "tuned+fixed": {"teacher": "94088a8da8eaf9a0", "distill": "49d88356e89ba3b1", "score": "1ab078ba35a48af8", "profile": "f0fd23314c874cc1", "search": "aa075391bc650b41", "build": "261bfb6396272a31"},
    "trt": {"teacher": "98f8e8e6e6ad1a3a", "distill": "f9da06a3975a7077", "score": "cd0f8add5f67ee83", "profile": "5140e01b14165ae1", "search": "d81afc4f58c01eb1", "build": "e469f3106140c0dd"},
    "trt+fixed": {"teacher": "98f8e8e6e6ad1a3a", "distill": "f9da06a3975a7077", "score": "cd0f8add5f67ee83", "profile": "5140e01b14165ae1", "search": "d88a009009e52ccc", "build": "8bb86d3dee5e0f60"},
}


def _config(name: str) -> RunConfig:
    cfg = RunConfig()
    if name == "tuned":       # a value off its default in every section, the opt-in features on
        cfg.teacher.resolution = 192
        cfg.data.max_images = 64
        cfg.distill.steps, cfg.distill.suffix_kl, cfg.distill.fisher, cfg.distill.spans = 50, 0.5, 0.25, 2
        cfg.score.max_images = 100
        cfg.profile.precisions, cfg.profile.int8_layout = ["fp32", "int8"], "ort"
        cfg.profile.context, cfg.profile.compile = "model", True
        cfg.search.budget, cfg.search.refine_sweeps, cfg.search.skip_weight = "2ms", 2, 1.5
        cfg.build.finetune_steps = 10
    elif name == "trt":       # int8 in TensorRT's layout, which the score fingerprint does not name
        cfg.profile.precisions = ["fp16", "int8"]
        cfg.profile.backend = "tensorrt"
    return cfg


@pytest.mark.parametrize("case", sorted(PINNED))
def test_fingerprints_of_saved_runs_stay_the_same(tmp_path, case):
    name, _, fixed = case.partition("+")
    cfg = _config(name)
    run = RunDir(tmp_path / "run")
    for file, text in (("scores.csv", "first,last,op\n0,0,keep\n"), ("latency.csv", "first,last,op\n0,0,keep\n"),
                       ("latency_fixed.json", '{"device": {}}'), ("teacher.json", '{"slots": []}')):
        (run.root / file).write_text(text)
    if fixed:
        (run.root / "scores_fixed.json").write_text('{"stem": {}}')
    got = {"teacher": teacher_fingerprint(cfg), "distill": distill_fingerprint(cfg), "score": score_fingerprint(cfg)}
    run.set_stage("score", "done", got["score"])
    got["profile"] = profile_fingerprint(run, cfg)
    got["search"] = search_fingerprint(run, cfg)
    run.set_stage("search", "done", got["search"])
    got["build"] = build_fingerprint(run, cfg)
    assert got == PINNED[case]


def test_stage_fingerprint_is_one_flat_object(tmp_path):
    from hant_trt.rundir import fingerprint, stage_fingerprint

    (tmp_path / "a.csv").write_text("x\n")
    assert stage_fingerprint({"s": 1}, upstream={"up": "f"}, files={"a.csv": tmp_path / "a.csv", "b": tmp_path / "b"}) \
        == fingerprint({"s": 1, "up": "f", "inputs": {"a.csv": "73cb3858a687a849", "b": ""}})
    with pytest.raises(ValueError, match="both"):
        stage_fingerprint({"teacher": 1}, upstream={"teacher": "f"})


def test_build_options_left_out_at_their_default_still_count_when_set(tmp_path):
    """`build.ema` is omitted from the hash at 0 (saved runs stay done) and changes it otherwise."""
    cfg = RunConfig()
    run = RunDir(tmp_path / "run")
    run.set_stage("search", "done", "s")
    plain = build_fingerprint(run, cfg)
    cfg.build.ema = 0.998
    assert build_fingerprint(run, cfg) != plain
    cfg.build.ema, cfg.build.seed = 0.0, 0
    assert build_fingerprint(run, cfg) != plain        # set, even to distill.seed's value, it is a choice made
    cfg.build.seed = None
    assert build_fingerprint(run, cfg) == plain
    cfg.build.kd_model = "efficientnet_lite1"
    assert build_fingerprint(run, cfg) != plain
    cfg.build.kd_model, cfg.build.polish_steps = None, 400
    assert build_fingerprint(run, cfg) != plain
    cfg.build.polish_steps, cfg.build.soup = 0, 3
    assert build_fingerprint(run, cfg) != plain
    cfg.build.soup = 0
    assert build_fingerprint(run, cfg) == plain


def test_a_search_judged_by_fine_tunes_is_redone_when_the_build_trains_otherwise(tmp_path):
    """With `search.refine_judge = "finetune"` the pick depends on how the build fine-tunes: its
    training settings join the search fingerprint (the engine's name does not); with the KL judge
    they stay out."""
    cfg = RunConfig()
    run = RunDir(tmp_path / "run")
    cfg.search.refine_sweeps = 1
    kl = search_fingerprint(run, cfg)
    cfg.build.ce_weight = 1.0
    assert search_fingerprint(run, cfg) == kl
    cfg.search.refine_judge = "finetune"
    judged = search_fingerprint(run, cfg)
    assert judged != kl
    cfg.build.engine_name = "x"
    assert search_fingerprint(run, cfg) == judged
    cfg.build.ce_weight = 2.0
    assert search_fingerprint(run, cfg) != judged
    cfg.build.ce_weight = 1.0
    cfg.search.judge_confirm = 0                       # how many seeds confirm a move: the judge's setting
    assert search_fingerprint(run, cfg) != judged
    cfg.search.refine_judge = "kl"
    assert search_fingerprint(run, cfg) == kl
