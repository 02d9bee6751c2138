import numpy as np
import torch
import torch.nn.functional as F

from hant_trt.student.assemble import Choice, StudentSpec, assemble, load_student, save_student
from hant_trt.student.finetune import finetune, kd_loss, recalibrate_bn
from hant_trt.deploy.verify import verify_onnx
from hant_trt.errors import UserError

import pytest

from conftest import Flaky


def test_keep_everything_student_equals_teacher(lite0, lite0_decomposition, tmp_path):
    d = lite0_decomposition
    choices = [Choice(i, i, "keep") for i in range(len(d.slots))]
    student = assemble(d, choices)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(student(x), lite0.model(x), atol=1e-5)
    spec = StudentSpec(model=lite0.name, resolution=224, data_config=lite0.data_config, choices=choices)
    save_student(tmp_path / "s", student, spec)
    again, spec2 = load_student(tmp_path / "s")
    with torch.no_grad():
        assert torch.equal(again(x), student(x))
    assert spec2.choices == choices


def test_choices_must_cover_every_slot(lite0_decomposition):
    with pytest.raises(UserError, match="exactly once"):
        assemble(lite0_decomposition, [Choice(0, 0, "keep"), Choice(2, 2, "keep")])


def test_verify_onnx_fp32_passes_and_detects_mismatch(tmp_path):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, torch.randn(1, 3, 16, 16), str(path), input_names=["input"], output_names=["output"],
                      dynamo=False, opset_version=17)
    xs = [np.random.randn(1, 3, 16, 16).astype(np.float32)]
    assert verify_onnx(m, path, xs).passed
    with torch.no_grad():
        m[4].bias += 1.0
    bad = verify_onnx(m, path, xs)
    assert not bad.passed and bad.max_abs_diff > 0.5


def test_kd_loss_mixes_the_labels_of_a_mixed_batch():
    from hant_trt.student.finetune import mix_batch

    torch.manual_seed(0)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    y = torch.tensor([0, 3, 5, -1])
    x, perm, lam = mix_batch(torch.randn(4, 3, 2, 2), 1.0, seed=3)
    assert x.shape == (4, 3, 2, 2) and torch.all((lam > 0) & (lam < 1))
    kl = kd_loss(s, t)
    ok = (y >= 0) & (y[perm] >= 0)          # an unlabelled image counts for neither side of a mix
    ce = lam * F.cross_entropy(s, y.clamp(min=0), reduction="none") \
        + (1 - lam) * F.cross_entropy(s, y[perm].clamp(min=0), reduction="none")
    got = kd_loss(s, t, y, ce_weight=2.0, mixed=(perm, lam))
    assert torch.allclose(got, kl + 2.0 * ce[ok].mean())
    same = kd_loss(s, t, y, ce_weight=2.0, mixed=(torch.arange(4), torch.ones(4)))
    assert torch.allclose(same, kd_loss(s, t, y, ce_weight=2.0))     # lam 1: the plain label term


def test_kd_loss_zero_for_identical_logits():
    t = torch.randn(4, 10)
    assert kd_loss(t, t).abs().item() < 1e-6
    assert kd_loss(t + torch.randn(4, 10), t).item() > 0


def test_finetune_resumes_to_the_same_weights(tmp_path):
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    data = [(torch.randn(3, 16, 16), -1) for _ in range(10)]

    def student():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5))

    ref = student()
    finetune(ref, teacher, data, 6, 4, 1e-2, tmp_path / "a", checkpoint_every=2, fingerprint="x")
    killed = student()
    with pytest.raises(KeyboardInterrupt):  # dies during step 5 (after the step-4 checkpoint)
        finetune(killed, teacher, Flaky(data, 4 * 4 + 2), 6, 4, 1e-2, tmp_path / "b",
                 checkpoint_every=2, fingerprint="x")
    resumed = student()
    info = finetune(resumed, teacher, data, 6, 4, 1e-2, tmp_path / "b", checkpoint_every=2, fingerprint="x")
    assert info["resumed_from"] == 4
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # another fingerprint starts from scratch
    other = student()
    assert finetune(other, teacher, data, 2, 4, 1e-2, tmp_path / "b", fingerprint="z")["resumed_from"] == 0


def _chain():
    """A tiny teacher decomposition (stem, two blocks, head) and a student with block 1 replaced."""
    from types import SimpleNamespace

    from hant_trt.student.assemble import Student

    torch.manual_seed(0)
    stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    blocks = [torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
              for _ in range(2)]
    head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    for m in blocks:
        m[1].running_mean.uniform_(-0.3, 0.3)
    d = SimpleNamespace(stem=stem, blocks=blocks, head=head)
    teacher = torch.nn.Sequential(stem, *blocks, head).eval()
    import copy

    replaced = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    student = Student(copy.deepcopy(stem), [copy.deepcopy(blocks[0]), replaced], copy.deepcopy(head))
    return d, teacher, student


def test_feature_finetune_with_frozen_bn_and_mixup(tmp_path):
    from hant_trt.student.finetune import student_features
    from hant_trt.teacher.capture import capture, normalised_mse

    d, teacher, student = _chain()
    data = [(torch.randn(3, 12, 12), i % 5) for i in range(16)]
    x = torch.stack([a for a, _ in data])

    def feature_error(s):
        with torch.no_grad():
            acts, _ = capture(d, x)
            feats, _ = student_features(s, x)
            return float(normalised_mse(feats[-1], acts[2]))

    bn_before = student.parts[0][1].running_mean.clone()
    before = feature_error(student)
    finetune(student, teacher, data, 30, 8, 1e-2, tmp_path / "f", fingerprint="f", decomposition=d,
             boundaries=[1, 2], feature_weight=1.0, mixup=0.4)
    assert feature_error(student) < 0.5 * before
    assert torch.equal(student.parts[0][1].running_mean, bn_before)  # BN frozen
    with pytest.raises(ValueError, match="boundaries"):
        finetune(student, teacher, data, 1, 8, 1e-2, tmp_path / "g", decomposition=d, boundaries=[2])


def test_finetune_ema_replaces_the_weights_and_resumes_after_a_kill(tmp_path):
    """`build.ema`: the averaged weights are what the fine-tune leaves, and a fine-tune killed
    between checkpoints resumes to the same average as an uninterrupted one."""
    import copy

    import hant_trt.student.finetune as ft

    d, teacher, student = _chain()
    data = [(torch.randn(3, 12, 12), i % 5) for i in range(16)]
    kw = dict(decomposition=d, boundaries=[1, 2], trainable=[student.parts[1]], checkpoint_every=4)

    def run(name, ema, s=None, items=data):
        s = s or copy.deepcopy(student)
        ft.finetune(s, teacher, items, 10, 8, 1e-2, tmp_path / name, fingerprint="f",
                    **{**kw, "trainable": [s.parts[1]]}, ema=ema)
        return s.parts[1][0].weight.detach().clone()

    plain, averaged = run("plain", 0.0), run("ema", 0.9)
    assert not torch.allclose(plain, averaged)

    killed = copy.deepcopy(student)
    with pytest.raises(KeyboardInterrupt):      # dies in step 7, after the checkpoint at step 4
        run("killed", 0.9, killed, Flaky(data, 7 * 8))
    assert torch.allclose(run("killed", 0.9, killed), averaged, atol=1e-6)


def test_finetune_takes_its_last_steps_at_the_full_resolution(tmp_path):
    """`build.full_res_steps`: steps from full_from on read the full-resolution set, the ones
    before only the low-resolution one."""
    d, teacher, student = _chain()

    class Counted(list):
        reads = 0

        def __getitem__(self, i):
            self.reads += 1
            return list.__getitem__(self, i)

    low = Counted((torch.randn(3, 12, 12), i % 5) for i in range(16))
    full = Counted((torch.randn(3, 20, 20), i % 5) for i in range(16))
    finetune(student, teacher, low, 10, 4, 1e-2, tmp_path / "f", fingerprint="f", decomposition=d,
             boundaries=[1, 2], full_set=full, full_from=7)
    assert (low.reads, full.reads) == (7 * 4, 3 * 4)


def test_recalibrate_bn_only_in_the_given_parts():
    _, _, student = _chain()
    kept, replaced = student.parts[0][1], student.parts[1][1]
    kept_mean = kept.running_mean.clone()
    recalibrate_bn(student, [torch.randn(4, 3, 12, 12)], [student.parts[1]])
    assert torch.equal(kept.running_mean, kept_mean) and not torch.equal(replaced.running_mean, torch.zeros(8))


def test_finetune_trains_only_the_given_parts(tmp_path):
    d, teacher, student = _chain()
    data = [(torch.randn(3, 12, 12), i % 5) for i in range(16)]
    for p in teacher.parameters():      # as left by an earlier fine-tune: must not decide what trains
        p.requires_grad_(False)
    fixed = {k: v.clone() for k, v in student.state_dict().items() if not k.startswith("parts.1.")}
    moved = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("parts.1.") and "weight" in k}
    finetune(student, teacher, data, 5, 8, 1e-2, tmp_path / "f", fingerprint="f", decomposition=d,
             boundaries=[1, 2], trainable=[student.parts[1]])
    state = student.state_dict()
    assert all(torch.equal(state[k], v) for k, v in fixed.items())         # stem, kept block, head untouched
    assert all(not torch.equal(state[k], v) for k, v in moved.items())
    assert all(p.requires_grad for p in student.parameters())              # frozen only while training
    assert finetune(student, teacher, data, 5, 8, 1e-2, tmp_path / "g", trainable=[])["steps"] == 0


def test_assembled_student_is_trainable_after_a_frozen_teacher(lite0, lite0_decomposition):
    before = [p.requires_grad for p in lite0.model.parameters()]
    try:
        lite0.model.requires_grad_(False)
        n = len(lite0_decomposition.slots)
        student = assemble(lite0_decomposition, [Choice(i, i, "keep") for i in range(n)])
        assert all(p.requires_grad for p in student.parameters())
        assert not any(p.requires_grad for p in lite0.model.parameters())
    finally:
        for p, r in zip(lite0.model.parameters(), before):
            p.requires_grad_(r)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_finetune_on_cuda_in_mixed_precision(tmp_path):
    d, teacher, student = _chain()
    data = [(torch.randn(3, 12, 12), i % 5) for i in range(16)]
    before = student.parts[1][0].weight.detach().clone()
    info = finetune(student, teacher, data, 3, 8, 1e-2, tmp_path / "f", fingerprint="f", decomposition=d,
                    boundaries=[1, 2], device="cuda")
    assert info["steps"] == 3
    w = student.parts[1][0].weight
    assert w.device.type == "cpu" and next(teacher.parameters()).device.type == "cpu"
    assert not torch.equal(w.detach(), before) and torch.isfinite(w).all()


def test_eval_objective_weighs_labels_when_there_are_some():
    """`build.keep_best` compares KL + ce_weight × CE: a fine-tune that trades a little KL for a
    lower label loss is kept; without labels KL alone decides."""
    from torch.utils.data import TensorDataset, DataLoader as DL

    from hant_trt.student.finetune import agreement, eval_objective

    torch.manual_seed(0)
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    teacher, student = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    with torch.no_grad():
        res = agreement(student, teacher, DL(TensorDataset(x, y), batch_size=5))
        ce = float(torch.nn.functional.cross_entropy(student(x), y))
        unl = agreement(student, teacher, DL(TensorDataset(x, torch.full((12,), -1)), batch_size=5))
    assert abs(res["ce"] - ce) < 1e-5 and "ce" not in unl
    assert abs(eval_objective(res, 0.5) - (res["kl"] + 0.5 * ce)) < 1e-6
    assert eval_objective(unl, 0.5) == unl["kl"]
    before, after = {"kl": 0.20, "ce": 1.60}, {"kl": 0.22, "ce": 1.40}
    assert eval_objective(after, 0.5) < eval_objective(before, 0.5)     # kept: top-1 traded for KL
    assert eval_objective(after, 0.0) > eval_objective(before, 0.0)


def test_keep_best_rejects_a_finetune_only_when_objective_and_top1_both_say_worse():
    from hant_trt.student.finetune import finetune_rejected

    before = {"kl": 0.269, "ce": 2.036, "student_top1": 65.0}
    confident = {"kl": 0.421, "ce": 2.194, "student_top1": 71.0}     # measured: objective up, top-1 up
    assert not finetune_rejected(before, confident, 2.0)
    assert finetune_rejected(before, dict(confident, student_top1=65.0), 2.0)   # no top-1 gained: reverted
    assert not finetune_rejected(before, {"kl": 0.2, "ce": 1.9, "student_top1": 60.0}, 2.0)  # objective better
    unlabelled_before, unlabelled_after = {"kl": 0.2}, {"kl": 0.3}
    assert finetune_rejected(unlabelled_before, unlabelled_after, 2.0)   # without labels, KL alone decides


def test_finetune_images_all_trains_on_the_eval_split_and_calibrates_on_train(lite0, lite0_decomposition, tmp_path):
    """build.finetune_images = "all": the fine-tune's sets (160-px and deploy-resolution) hold the
    eval images too; BN estimation / int8 calibration and the eval loader do not change; the
    keep_best gate, which reads the eval split, is off and the build says its figures are trained-on."""
    from PIL import Image

    from hant_trt.config import RunConfig, validate
    from hant_trt.student.stage import build_data, train_student

    for i in range(10):
        Image.new("RGB", (80, 60), (20 * i, 10, 10)).save(tmp_path / f"{i}.jpg")
    cfg = RunConfig()
    cfg.data.train, cfg.data.eval_fraction, cfg.distill.resolution = str(tmp_path), 0.2, 64
    cfg.build.finetune_steps, cfg.build.full_res_steps, cfg.build.bn_images, cfg.build.batch_size = 2, 1, 2, 2
    held = build_data(validate(cfg), lite0.data_config)
    cfg.build.finetune_images = "all"
    both = build_data(validate(cfg), lite0.data_config)
    assert (len(held.train), len(held.full), len(held.deploy_train)) == (8, 8, 8)
    assert (len(both.train), len(both.full), len(both.deploy_train)) == (10, 10, 8)
    assert both.train[9][0].shape == (3, 64, 64) and both.full[9][0].shape == (3, 224, 224)
    assert len(both.eval_loader.dataset) == len(held.eval_loader.dataset) == 2
    d = lite0_decomposition
    choices = [Choice(i, i, "ir_k3_e2_relu6" if i == 2 else "keep") for i in range(len(d.slots))]
    cfg.build.seed = 7                         # the fine-tune's own seed; the split was drawn by distill.seed
    t = train_student(assemble(d, choices), lite0.model, d, choices, {}, both, cfg, tmp_path / "ckpt", "fp")
    assert t.finetune["steps"] == 2 and t.finetune["images"] == 10 and t.finetune["seed"] == 7
    assert "kept" not in t.finetune and t.notes["eval_split_trained_on"] is True


def test_finetune_teacher_sees_its_own_side_and_the_student_its_own(tmp_path):
    """`build.teacher_resolution`: batches come at the teacher's side; the teacher's logits are
    taken on them as they are, the student (and the feature-map targets) sees them resized to its
    side of the step: the first, then from `full_from` on the second."""
    from hant_trt.student.finetune import agreement, student_view

    d, teacher, student = _chain()
    seen = {"teacher": [], "student": [], "capture": []}
    teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].shape[-1]))
    student.parts[1].register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].shape[-1]))
    d.blocks[1].register_forward_pre_hook(lambda m, a: seen["capture"].append(a[0].shape[-1]))
    data = [(torch.randn(3, 20, 20), i % 5) for i in range(16)]
    finetune(student, teacher, data, 5, 4, 1e-2, tmp_path / "f", fingerprint="f", decomposition=d,
             boundaries=[1, 2], full_set=data, full_from=3, sides=(12, 16))
    assert seen["teacher"] == [20] * 5
    assert seen["student"] == [12, 12, 12, 16, 16]
    # the chain's teacher shares its blocks: each step, the feature targets at the student's side,
    # then the teacher's logits at its own
    assert seen["capture"] == [12, 20, 12, 20, 12, 20, 16, 20, 16, 20]
    seen = {k: [] for k in seen}
    finetune(student, teacher, data, 2, 4, 1e-2, tmp_path / "g", fingerprint="g", sides=(12, 12))
    assert seen["teacher"] == [20, 20] and seen["student"] == [12, 12]
    seen = {k: [] for k in seen}
    res = agreement(student, teacher, [(torch.stack([x for x, _ in data[:4]]), torch.arange(4))], side=8)
    assert seen["teacher"] == [20] and seen["student"] == [8] and res["images"] == 4
    x = torch.randn(2, 3, 20, 20)
    assert student_view(x, None) is x and student_view(x, 20) is x
    assert student_view(torch.ones(1, 3, 20, 20), 13).allclose(torch.ones(1, 3, 13, 13))   # antialiased, no ringing


def test_finetune_learns_the_logits_of_the_kd_model_and_the_features_of_the_teacher(tmp_path):
    """`build.kd_model`: each step the logits come from that model, on the teacher's images, the
    feature-map targets from the teacher; trained on its logits alone, the student moves towards
    it and away from the teacher."""
    import torch.nn.functional as F

    d, teacher, student = _chain()
    torch.manual_seed(1)
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 5))
    seen = {"other": [], "capture": [], "teacher": []}
    other.register_forward_pre_hook(lambda m, a: seen["other"].append(a[0].shape[-1]))
    teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].shape[-1]))
    d.blocks[1].register_forward_pre_hook(lambda m, a: seen["capture"].append(a[0].shape[-1]))
    data = [(torch.randn(3, 16, 16), i % 5) for i in range(16)]
    finetune(student, teacher, data, 3, 4, 1e-2, tmp_path / "f", fingerprint="f", decomposition=d,
             boundaries=[1, 2], logits_teacher=other, sides=(12, 12))
    assert seen == {"other": [16] * 3, "capture": [12] * 3, "teacher": []}
    assert not any(p.requires_grad for p in other.parameters()) and not other.training

    x = torch.stack([x for x, _ in data])

    def kl(a, b):
        return float(F.kl_div(F.log_softmax(a(x), 1), F.log_softmax(b(x), 1), reduction="batchmean", log_target=True))

    with torch.no_grad():
        before = kl(student, other), kl(student, teacher)
    finetune(student, teacher, data, 60, 8, 3e-2, tmp_path / "g", fingerprint="g", ce_weight=0.0, logits_teacher=other)
    with torch.no_grad():
        after = kl(student, other), kl(student, teacher)
    assert after[0] < 0.5 * before[0] and after[1] > before[1], (before, after)


def test_kd_model_must_normalise_as_the_teacher_does_and_share_its_classes():
    """A logits model reading the teacher's images must expect them, and answer in the teacher's
    classes: another mean/std or class count is refused."""
    from hant_trt.config import RunConfig
    from hant_trt.errors import UserError
    from hant_trt.student.stage import kd_logits_model

    cfg = RunConfig()
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000}
    assert kd_logits_model(cfg, imagenet) is None
    cfg.build.kd_model, cfg.build.kd_weights = "efficientnet_lite1", "random"
    assert not kd_logits_model(cfg, imagenet).training
    with pytest.raises(UserError, match="normalises its input with mean"):
        kd_logits_model(cfg, {**imagenet, "mean": [0.5] * 3})
    with pytest.raises(UserError, match="1000 classes, the teacher 10"):
        kd_logits_model(cfg, {**imagenet, "num_classes": 10})


def test_build_data_at_the_teachers_side(lite0, tmp_path):
    """build.teacher_resolution: the fine-tune's set and the eval split at the teacher's side, one
    set for both phases of the fine-tune, the student's sides (distill.resolution, the run's); BN
    estimation and int8 calibration images stay at the run's side. Unset: as before."""
    from PIL import Image

    from hant_trt.config import RunConfig, validate
    from hant_trt.student.stage import build_data

    for i in range(10):
        Image.new("RGB", (80, 60), (20 * i, 10, 10)).save(tmp_path / f"{i}.jpg")
    cfg = RunConfig()
    cfg.data.train, cfg.data.eval_fraction, cfg.distill.resolution = str(tmp_path), 0.2, 64
    cfg.build.full_res_steps, cfg.build.bn_images, cfg.build.batch_size = 1, 2, 2
    cfg.build.teacher_resolution = 224
    run_side = {**lite0.data_config, "input_size": [3, 208, 208]}
    data = build_data(validate(cfg), run_side)
    assert data.sides == (64, 208) and data.eval_side == 208 and data.full is data.train
    assert data.train[0][0].shape == (3, 224, 224) and data.eval_loader.dataset[0][0].shape == (3, 224, 224)
    assert data.deploy_train[0][0].shape == (3, 208, 208) and data.bn_batches[0].shape[-1] == 208
    cfg.build.teacher_resolution = None
    plain = build_data(validate(cfg), run_side)
    assert plain.sides is None and plain.eval_side is None and plain.train[0][0].shape == (3, 64, 64)


def test_polish_trains_every_weight_on_the_kd_models_logits_at_the_deploy_side(tmp_path):
    """`build.polish_steps`: after the fine-tune, every weight of the student trains (not only the
    replaced part), on the deploy-side images (`BuildData.full`, the student at `sides[1]`), on the
    logits of `build.kd_model` alone: no feature-map targets are taken from the teacher."""
    from hant_trt.config import RunConfig
    from hant_trt.student.stage import BuildData, polish_student

    d, teacher, student = _chain()
    torch.manual_seed(1)
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 5))
    seen = {"other": [], "student": [], "capture": [], "teacher": []}
    other.register_forward_pre_hook(lambda m, a: seen["other"].append(a[0].shape[-1]))
    student.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].shape[-1]))
    teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].shape[-1]))
    d.blocks[1].register_forward_pre_hook(lambda m, a: seen["capture"].append(a[0].shape[-1]))
    small = [(torch.randn(3, 12, 12), i % 5) for i in range(16)]
    full = [(torch.randn(3, 16, 16), i % 5) for i in range(16)]
    cfg = RunConfig()
    cfg.build.polish_steps, cfg.build.polish_lr, cfg.build.batch_size = 3, 1e-2, 4
    start = {k: v.clone() for k, v in student.state_dict().items() if v.dtype.is_floating_point}
    data = BuildData(small, full, small, None, [], sides=(10, 14), logits_teacher=other)
    out = polish_student(student, teacher, data, cfg, tmp_path / "p", "p")
    assert out["steps"] == 3 and out["images"] == len(full)
    assert seen == {"other": [16] * 3, "student": [14] * 3, "capture": [], "teacher": []}
    moved = {k for k, v in student.state_dict().items() if k in start and not torch.equal(v, start[k])}
    weights = {k for k in start if k.endswith("weight") and "running" not in k}
    assert weights <= moved, weights - moved     # stem, kept block and head too, not only the replaced part


def test_judge_scales_the_polish_steps_with_the_fine_tune():
    from hant_trt.config import RunConfig
    from hant_trt.search.judge import judge_config

    cfg = RunConfig()
    cfg.build.finetune_steps, cfg.build.polish_steps = 1200, 400
    assert judge_config(cfg, 150).build.polish_steps == 50
    cfg.build.polish_steps = 0
    assert judge_config(cfg, 150).build.polish_steps == 0


def test_soup_is_the_average_of_its_ingredients_each_fine_tuned_alone(tmp_path):
    """`build.soup = 3`: three fine-tunes from the same assembled weights at seeds build.seed + 0..2,
    averaged; the parts no fine-tune trains stay bit for bit; a second call resumes every ingredient
    from its checkpoints and makes the same soup."""
    import copy

    from hant_trt.config import RunConfig
    from hant_trt.search.judge import judge_config
    from hant_trt.student.stage import BuildData, soup_finetune, tune_once

    d, teacher, student = _chain()
    ordered = [Choice(0, 0, "keep"), Choice(1, 1, "conv1x1")]
    images = [(torch.randn(3, 12, 12), i % 5) for i in range(16)]
    data = BuildData(images, None, images, None, [])
    cfg = RunConfig()
    cfg.build.finetune_steps, cfg.build.full_res_steps, cfg.build.batch_size = 3, 0, 4
    cfg.build.finetune_lr, cfg.build.soup, cfg.build.seed = 1e-2, 3, 5
    start = copy.deepcopy(student)
    out = soup_finetune(student, teacher, d, ordered, data, cfg, tmp_path / "soup", "fp", "cpu", None)
    assert out["soup"]["seeds"] == [5, 6, 7] and out["seed"] == 5 and len(out["soup"]["final_losses"]) == 3
    alone = []
    for seed in (5, 6, 7):
        one, one_cfg = copy.deepcopy(start), copy.deepcopy(cfg)
        one_cfg.build.soup, one_cfg.build.seed = 0, seed
        tune_once(one, teacher, d, ordered, data, one_cfg, tmp_path / f"alone{seed}", "fp", "cpu", None)
        alone.append(one.state_dict())
    assert not torch.equal(alone[0]["parts.1.0.weight"], alone[1]["parts.1.0.weight"])
    got, before = student.state_dict(), start.state_dict()
    for key, value in got.items():
        if key.startswith("parts.1.") and value.is_floating_point() and "running" not in key:
            assert torch.allclose(value, sum(s[key] for s in alone) / 3, atol=1e-6), key
        else:
            assert torch.equal(value, before[key]), key        # untrained: not rounded by the average
    again = copy.deepcopy(start)
    out2 = soup_finetune(again, teacher, d, ordered, data, cfg, tmp_path / "soup", "fp", "cpu", None)
    assert out2["resumed_from"] == 3 and (tmp_path / "soup" / "soup2").is_dir()
    assert all(torch.equal(v, got[k]) for k, v in again.state_dict().items())
    assert judge_config(cfg, 2).build.soup == 0 and cfg.build.soup == 3    # a judgement fine-tunes once


def test_no_soup_is_one_fine_tune_at_the_builds_seed(tmp_path):
    from hant_trt.config import RunConfig
    from hant_trt.student.stage import BuildData, soup_finetune, soup_seeds

    d, teacher, student = _chain()
    images = [(torch.randn(3, 12, 12), i % 5) for i in range(8)]
    cfg = RunConfig()
    cfg.build.finetune_steps, cfg.build.full_res_steps, cfg.build.batch_size = 2, 0, 4
    assert soup_seeds(cfg) == [cfg.distill.seed]
    cfg.build.soup = 1
    out = soup_finetune(student, teacher, d, [Choice(0, 0, "keep"), Choice(1, 1, "conv1x1")],
                        BuildData(images, None, images, None, []), cfg, tmp_path / "one", "fp", "cpu", None)
    assert "soup" not in out and out["steps"] == 2 and not (tmp_path / "one" / "soup1").exists()
