import pytest
import timm
import torch

from hant_trt.errors import UserError
from hant_trt.ops import Candidate, build, build_with_info, candidates, decode, encode
from hant_trt.teacher.decompose import decompose
from hant_trt.teacher.slot import merge

FAMILY_MODELS = ["efficientnet_lite0", "efficientnetv2_rw_t", "mobilenetv3_small_050", "resnet18", "resnet26"]


@pytest.fixture(scope="module")
def decomps():
    torch.manual_seed(0)
    return {n: decompose(timm.create_model(n, pretrained=False).eval(), 64) for n in FAMILY_MODELS}


@pytest.mark.parametrize("text", ["ir_k5_e3_se25_silu", "er_k3_e4_relu", "ds_k3_relu6", "conv_k3_hswish",
                                  "bot_k3_e0.25_g32_relu", "basic_k3_relu", "skip", "proj", "keep", "ir_k3_e1"])
def test_round_trip(text):
    assert encode(decode(text)) == text


@pytest.mark.parametrize("bad,msg", [("zz_k3", "unknown op family"), ("ir_k3_e2_foo", "unknown token"),
                                     ("ir_k3", "lacks"), ("ir_k4_e2", "odd"), ("ds_k3_e2", "takes no"),
                                     ("ir_k3_k5_e2", "repeats")])
def test_bad_op_strings(bad, msg):
    with pytest.raises(UserError, match=msg):
        decode(bad)


def test_unknown_preset(decomps):
    with pytest.raises(UserError, match="unknown preset"):
        candidates(decomps["resnet18"].slots[0], "huge")


# every family with `tiny`; `small` on one model per block type (ResNet-50-style bottlenecks with the
# full `small` list take > 1 min on 2 cores, their ops are the same code as resnet18's and Lite0's)
@pytest.mark.parametrize("model,preset", [(m, "tiny") for m in FAMILY_MODELS]
                         + [(m, "small") for m in ("efficientnet_lite0", "mobilenetv3_small_050", "resnet18")])
def test_every_preset_op_builds_runs_and_backprops(decomps, model, preset):
    d = decomps[model]
    for slot, block in zip(d.slots, d.blocks):
        ops = candidates(slot, preset)
        assert ops[0] == "keep" and len(ops) == len(set(ops))
        x = torch.randn(2, *slot.in_shape, requires_grad=True)
        for op in ops:
            m = build(op, slot, block).train()
            y = m(x)
            assert tuple(y.shape[1:]) == tuple(slot.out_shape), (model, slot.index, op)
            if any(p.requires_grad for p in m.parameters()):
                y.square().mean().backward()


def test_paper_preset_has_197_distinct_per_mbconv_slot(decomps):
    slot = decomps["efficientnet_lite0"].slots[3]
    ops = candidates(slot, "paper")
    assert len(ops) >= 197 and len(set(ops)) == len(ops)
    sigs = {Candidate(slot, op).signature for op in ops if op != "keep"}
    assert len(sigs) == len(ops) - 1
    # a sample of them builds with the right shape
    x = torch.randn(1, *slot.in_shape)
    for op in ops[1::17]:
        assert tuple(build(op, slot).eval()(x).shape[1:]) == tuple(slot.out_shape)


def test_teacher_op_with_inheritance_reproduces_teacher(lite0_decomposition):
    d = lite0_decomposition
    for i in (0, 1, 2, 5, 10):
        slot, block = d.slots[i], d.blocks[i]
        m, inherited = build_with_info(slot.teacher_op, slot, block)
        assert inherited
        x = torch.randn(2, *slot.in_shape)
        with torch.no_grad():
            assert torch.allclose(m.eval()(x), block(x), atol=1e-5), (i, slot.teacher_op)


def test_resnet_basic_reproduces_teacher():
    torch.manual_seed(0)
    model = timm.create_model("resnet18").eval()
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    d = decompose(model, 64)
    for i in (0, 2):
        slot, block = d.slots[i], d.blocks[i]
        assert slot.teacher_op == "basic_k3_relu"
        m, inherited = build_with_info(slot.teacher_op, slot, block)
        x = torch.randn(2, *slot.in_shape)
        with torch.no_grad():
            assert inherited and torch.allclose(m.eval()(x), block(x), atol=1e-5)


def test_inherited_and_refit_candidate_starts_closer_than_random(lite0, lite0_decomposition):
    from hant_trt.data import EmbeddedDataset
    from hant_trt.distill.capture import capture
    from hant_trt.ops.refit import refit_readout

    d = lite0_decomposition
    slot, block = d.slots[4], d.blocks[4]
    ds = EmbeddedDataset(lite0.data_config, length=16, split="eval")
    acts, _ = capture(d, torch.stack([ds[i][0] for i in range(16)]))
    x, ref = acts[4], acts[5]  # the slot's real input and output on photos
    fit, held = slice(0, 8), slice(8, 16)

    def err(m):
        with torch.no_grad():
            return ((m.eval()(x[held]) - ref[held]) ** 2).mean().item()

    inh = build("ir_k3_e3_relu6", slot, block)
    torch.manual_seed(0)
    rnd = build("ir_k3_e3_relu6", slot, None)
    before = err(inh)
    assert refit_readout(inh, x[fit], ref[fit]) and refit_readout(rnd, x[fit], ref[fit])
    assert err(inh) < 0.6 * before          # the least-squares read-out helps on unseen images
    assert err(inh) < 0.85 * err(rnd)       # and inheriting the teacher's channels beats random
    # a wider candidate starts exactly at the teacher's function
    with torch.no_grad():
        wide = build("ir_k5_e8_relu6", slot, block).eval()(x)
    assert torch.allclose(wide, block(x), atol=1e-4)


def test_signature_and_cost(lite0_decomposition):
    slot = lite0_decomposition.slots[2]
    keep = Candidate(slot, "keep")
    same = Candidate(slot, slot.teacher_op)
    assert keep.signature == same.signature == "ir_k3_e6_relu6|24x56x56|24x56x56|s1"
    small = Candidate(slot, "ir_k3_e2_relu6")
    assert small.macs < keep.macs and small.params < keep.params


def test_span_candidates_build(lite0_decomposition):
    d = lite0_decomposition
    span = merge(d.slots[1:3])
    assert span.name == "1-2" and span.stride == 2
    ops = candidates(span, "tiny")
    x = torch.randn(1, *span.in_shape)
    for op in ops[1:]:
        assert tuple(build(op, span).eval()(x).shape[1:]) == tuple(span.out_shape)
