"""The smaller-input peer that trains (benchmarks/probe_resolution.py `finetune_at`): the copy learns
to give the teacher's answers at a smaller input, and the teacher itself is left as it was."""

import importlib.util
from pathlib import Path

import torch
from torch import nn

_root = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("probe_resolution", _root / "benchmarks/probe_resolution.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


class Crops(torch.utils.data.Dataset):
    """Fixed random 'images' with labels: (tensor, label) as the project's datasets yield."""

    def __init__(self, n=32, size=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 5, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def test_finetune_at_a_smaller_size_moves_the_copy_towards_the_teacher_and_leaves_the_teacher(monkeypatch):
    monkeypatch.setenv("HANT_TRT_NO_PROGRESS", "1")
    teacher, data = _net(), Crops()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = data.x
    small = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)

    def gap(model):
        with torch.no_grad():
            t = torch.log_softmax(teacher(x), 1)
            return torch.nn.functional.kl_div(torch.log_softmax(model(small), 1), t, log_target=True,
                                              reduction="batchmean").item()

    student = probe.finetune_at(teacher, data, 16, steps=60, lr=3e-3, batch_size=16, ce_weight=0.0)
    assert gap(student) < 0.5 * gap(teacher)                       # the teacher itself at 16 px is the start
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    bn_t, bn_s = teacher[1], student[1]
    assert torch.equal(bn_t.running_mean, bn_s.running_mean) and not student.training   # statistics kept


def test_finetune_at_with_a_kd_model_learns_its_logits_not_the_teachers(monkeypatch):
    """`--kd-model`: the copy of the teacher learns the other model's answers, at the teacher's size."""
    monkeypatch.setenv("HANT_TRT_NO_PROGRESS", "1")
    teacher, data = _net(), Crops()
    torch.manual_seed(3)
    other = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 5)).eval()
    x = data.x

    def kl(model, target):
        with torch.no_grad():
            return torch.nn.functional.kl_div(torch.log_softmax(model(x), 1), torch.log_softmax(target(x), 1),
                                              log_target=True, reduction="batchmean").item()

    student = probe.finetune_at(teacher, data, 32, steps=60, lr=3e-3, batch_size=16, ce_weight=0.0, logits_from=other)
    assert kl(student, other) < 0.5 * kl(teacher, other) and kl(student, teacher) > 0.05


def test_upsampled_resizes_each_batch_to_the_side_and_keeps_the_labels():
    import numpy as np

    x = np.random.default_rng(0).random((4, 3, 26, 26), dtype=np.float32)
    y = np.arange(4)
    out = probe.upsampled([(x, y), (x[:2], y[:2])], 32, "bicubic")
    assert [b[0].shape for b in out] == [(4, 3, 32, 32), (2, 3, 32, 32)]
    assert np.array_equal(out[0][1], y) and np.array_equal(out[1][1], y[:2])
    assert abs(float(out[0][0].mean()) - float(x.mean())) < 0.02   # a resize, not a crop or a pad
