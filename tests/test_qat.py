"""Int8-aware fine-tune (`build.qat`): the roundings attached to the unfolded student compute what
the layout's simulation (and so the exported Q/DQ ONNX) computes, let gradients through, and come
off leaving the float student."""

import pytest
import torch

from conftest import Flaky
from hant_trt.quant.layouts import LAYOUTS
from hant_trt.quant.parts import int8_parts
from hant_trt.quant.plan import calibrate_parts, simulate_int8
from hant_trt.quant.qat import attach
from hant_trt.student.assemble import Choice, assemble
from hant_trt.student.finetune import student_features

RES = 96


def _features(student, x):
    with torch.no_grad():
        feats, logits = student_features(student, x)
    return feats, logits


@pytest.mark.parametrize("layout", ["trt", "ort", "ort-qadd"])
@pytest.mark.parametrize("where", ["parts", "head"])
def test_attached_roundings_compute_the_simulated_int8_student(lite0, tmp_path, layout, where):
    from hant_trt.teacher.decompose import decompose

    d = decompose(lite0.model, RES)
    int8 = (1, 2) if where == "parts" else ()
    choices = [Choice(i, i, "keep", "int8" if i in int8 else "fp32") for i in range(len(d.slots))]
    student = assemble(d, choices).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 3, RES, RES, generator=gen) for _ in range(2)]
    calib = calibrate_parts(student, int8_parts(choices), batches, "max", cache_dir=tmp_path / "calib",
                            layout=LAYOUTS[layout], fixed=("head",) if where == "head" else ())
    x = torch.rand(2, 3, RES, RES, generator=gen)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    fp32, fp32_logits = _features(student, x)
    sim, sim_logits = _features(simulate_int8(student, int8_parts(choices), calib), x)
    handle = attach(student, calib)
    assert handle.sites >= len(calib.amax) - 1      # every calibrated layer (a reused input counts once)
    got, got_logits = _features(student, x)
    # compared right behind the rounded layers: further on, the rare value that lands on a rounding
    # boundary in one and not the other (BN folded or not: float order) spreads through later layers
    a, b, c = (fp32[2], sim[2], got[2]) if where == "parts" else (fp32_logits, sim_logits, got_logits)
    quant_effect, gap = (a - b).abs().mean(), (c - b).abs().mean()
    allowed = 0.01 * quant_effect
    if where == "head" and layout != "trt":
        # the logits' own uint8 rounding is the deploy's alone (quant/qat.py): up to half a step each
        from hant_trt.quant.qdq_ort import u8_params

        classifier = max(calib.amax)
        allowed = allowed + u8_params(calib.out_lo[classifier], calib.out_hi[classifier])[0] / 2
    assert quant_effect > 1e-3 and gap < allowed, (float(gap), float(quant_effect))
    out = student(x)
    out.sum().backward()
    layer = student.get_submodule(max(calib.amax))         # parts.2.conv_pwl / the head's classifier
    w = layer.parametrizations.weight.original
    assert w.grad is not None and w.grad.abs().sum() > 0      # straight through the roundings
    handle.remove()
    state = student.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], v) for k, v in before.items())
    assert torch.equal(_features(student, x)[1], fp32_logits)


def test_straight_through_stops_where_the_rounding_clamps():
    """A conv's output rounded with its fused ReLU6's range is that ReLU6: no gradient outside it."""
    from hant_trt.quant.qat import _affine, straight_through

    x = torch.tensor([-1.0, 0.5, 3.0, 7.0], requires_grad=True)
    rounding = _affine(0.0, 6.0)
    y = rounding(x)
    assert torch.allclose(y.detach(), torch.tensor([0.0, 0.5, 3.0, 6.0]), atol=6 / 255)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    z = torch.tensor([0.3], requires_grad=True)
    straight_through(z, torch.round(z)).sum().backward()      # weights: no range, all through
    assert z.grad.tolist() == [1.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("layout", ["trt", "ort-qadd"])
def test_qat_fine_tune_steps_on_cuda(lite0, tmp_path, layout):
    from hant_trt.student.finetune import finetune
    from hant_trt.teacher.decompose import decompose

    d = decompose(lite0.model, RES)
    choices = [Choice(i, i, "keep", "int8" if i in (1, 2) else "fp32") for i in range(len(d.slots))]
    student = assemble(d, choices)
    gen = torch.Generator().manual_seed(0)
    calib = calibrate_parts(student, int8_parts(choices), [torch.rand(4, 3, RES, RES, generator=gen)], "max",
                            layout=LAYOUTS[layout], fixed=("head",), cache_dir=tmp_path / "calib")
    data = [(torch.rand(3, RES, RES, generator=gen), i % 1000) for i in range(8)]
    before = student.parts[2].conv_pw.weight.detach().clone()
    handle = attach(student, calib)
    try:
        info = finetune(student, lite0.model, data, 2, 4, 1e-3, tmp_path / "f", fingerprint="f",
                        trainable=[student.parts[2]], device="cuda")
    finally:
        handle.remove()
    w = student.parts[2].conv_pw.weight
    assert info["steps"] == 2 and w.device.type == "cpu"
    assert not torch.equal(w.detach(), before) and torch.isfinite(w).all()


def test_qat_fine_tune_killed_between_checkpoints_resumes_to_the_same_weights(tmp_path):
    """The checkpoint holds the parametrized weights' float originals: a QAT fine-tune killed after a
    checkpoint resumes to exactly the weights of an uninterrupted one."""
    import copy

    import hant_trt.student.finetune as ft
    from hant_trt.student.assemble import Student

    torch.manual_seed(0)
    stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    blocks = [torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
              for _ in range(2)]
    head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    teacher = torch.nn.Sequential(stem, *blocks, head).eval()
    base = Student(copy.deepcopy(stem), [copy.deepcopy(b) for b in blocks], copy.deepcopy(head))
    data = [(torch.randn(3, 12, 12), i % 5) for i in range(16)]
    calib = calibrate_parts(base, [0, 1], [torch.randn(4, 3, 12, 12)], "max", layout=LAYOUTS["trt"],
                            cache_dir=tmp_path / "calib")

    def run(name, s, items=data):
        handle = attach(s, calib)
        try:
            ft.finetune(s, teacher, items, 10, 8, 1e-2, tmp_path / name, fingerprint="f", trainable=[s.parts[1]],
                        checkpoint_every=4)
        finally:
            handle.remove()
        return s.parts[1][0].weight.detach().clone()

    whole = run("whole", copy.deepcopy(base))
    killed = copy.deepcopy(base)
    with pytest.raises(KeyboardInterrupt):      # dies in step 7, after the checkpoint at step 4
        run("killed", killed, Flaky(data, 7 * 8))
    assert not torch.nn.utils.parametrize.is_parametrized(killed.parts[1][0])   # taken off on the way out
    assert torch.equal(run("killed", killed), whole)
    assert not torch.equal(whole, base.parts[1][0].weight)
