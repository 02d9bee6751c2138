"""The fine-tune judge's pure parts (search/judge.py); its agreement with the build itself is
checked on a real run in tests/test_pipeline.py."""

from hant_trt import config
from hant_trt.search.ilp import Option
from hant_trt.search.judge import judge_config, selection_key, training_settings


def test_the_judge_shortens_the_fine_tune_and_its_deploy_resolution_share_alike():
    cfg = config.RunConfig()
    cfg.build.finetune_steps, cfg.build.full_res_steps = 1200, 300
    short = judge_config(cfg, 150)
    assert (short.build.finetune_steps, short.build.full_res_steps) == (150, 38)   # a quarter, as the build's
    assert (cfg.build.finetune_steps, cfg.build.full_res_steps) == (1200, 300)      # the run's own untouched
    cfg.build.full_res_steps = 5000
    assert judge_config(cfg, 150).build.full_res_steps == 150                       # never more than all
    cfg.build.finetune_steps = 0
    assert judge_config(cfg, 10).build.full_res_steps == 0


def test_the_judge_never_fine_tunes_on_the_eval_split_it_reads():
    """build.finetune_images = "all" is for the shipped student: a judgement is read on the eval
    split, so its fine-tune trains on the train split alone, and keys stay those of earlier runs."""
    cfg = config.RunConfig()
    cfg.build.finetune_images = "all"
    j = judge_config(cfg, 150)
    assert j.build.finetune_images == "train" and cfg.build.finetune_images == "all"
    assert "finetune_images" not in training_settings(j)
    assert training_settings(j) == training_settings(judge_config(config.RunConfig(), 150))


def test_the_fine_tunes_own_seed_keys_a_judgement_only_when_set():
    from hant_trt.student.stage import finetune_seed

    cfg = config.RunConfig()
    cfg.distill.seed = 4
    assert "seed" not in training_settings(cfg) and finetune_seed(cfg) == 4
    cfg.build.seed = 1
    assert training_settings(cfg)["seed"] == 1 and finetune_seed(cfg) == 1


def test_a_judgement_is_keyed_by_the_selection_its_precisions_and_the_settings():
    a = [Option(0, 0, "ir_k3_e4", "int8", 0.1, {}), Option(1, 2, "keep", "fp32", 0.0, {})]
    key = selection_key(a, {"stem": "int8"}, {"build": {"ce_weight": 2.0}})
    assert key == selection_key(list(a), {"stem": "int8"}, {"build": {"ce_weight": 2.0}})
    fp32 = [Option(0, 0, "ir_k3_e4", "fp32", 0.1, {}), a[1]]
    assert key != selection_key(fp32, {"stem": "int8"}, {"build": {"ce_weight": 2.0}})
    assert key != selection_key(a, {}, {"build": {"ce_weight": 2.0}})
    assert key != selection_key(a, {"stem": "int8"}, {"build": {"ce_weight": 1.0}})


def test_a_move_is_confirmed_by_its_mean_gain_on_fresh_seeds_only():
    """`confirmer` judges the current and the proposed selection again with each fresh seed and
    takes the move when their mean relative gain clears min_gain; seed None (the sweep's own
    judgement, the one luck picked) is never asked."""
    from hant_trt.search.judge import confirmer

    current, proposed = [Option(0, 0, "keep", "int8", 0.0, {})], [Option(0, 0, "e4", "int8", 0.0, {})]
    table = {(1, "keep"): 4.0, (1, "e4"): 3.8, (2, "keep"): 4.0, (2, "e4"): 4.0}   # +5 %, 0
    asked = []

    def evaluate(options, seed=None):
        asked.append(seed)
        return table[(seed, options[0].op)]

    ok, detail = confirmer(evaluate, [1, 2], 0.005)(current, proposed)
    assert ok and detail["seeds"] == [1, 2] and detail["gains"] == [0.05, 0.0] and None not in asked
    assert "+2.5 %" in detail["say"]
    table[(2, "e4")] = 4.2                                                           # +5 %, −5 %
    ok, detail = confirmer(evaluate, [1, 2], 0.005)(current, proposed)
    assert not ok and detail["gains"] == [0.05, -0.05]


def test_confirmations_use_seeds_past_the_builds_own():
    from hant_trt.search.judge import confirmation_seeds

    cfg = config.RunConfig()
    assert confirmation_seeds(cfg, 2) == [1, 2]          # distill.seed 0: as before build.seed existed
    cfg.build.seed = 5
    assert confirmation_seeds(cfg, 2) == [6, 7]
