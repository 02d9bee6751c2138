import pytest
import timm
import torch
from torch import nn

from hant_trt.errors import UserError
from hant_trt.ops import (PRESETS, REGISTRY, Candidate, build, build_with_info, candidates, decode, encode,
                          inherits, register_family, register_preset)
from hant_trt.teacher.decompose import decompose, teacher_op_string
from hant_trt.teacher.slot import Slot, merge

# one model per supported family / block type; at 32 px every op still meets every stride
FAMILY_MODELS = ["efficientnet_lite0", "efficientnetv2_rw_t", "mobilenetv3_small_050", "resnet18", "mini_bottleneck"]


# `paper` on 512-channel slots builds 77M-parameter er_k7_e6 modules: a narrow ResNet stands in
PAPER_MODELS = ["efficientnet_lite0", "efficientnetv2_rw_t", "mobilenetv3_small_050", "mini_basic", "mini_bottleneck"]


def _model(name: str) -> nn.Module:
    if name.startswith("mini_"):  # timm's ResNet with Basic/Bottleneck blocks, narrow so it tests fast
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet

        block = Bottleneck if name == "mini_bottleneck" else BasicBlock
        return ResNet(block, (1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16)
    return timm.create_model(name, pretrained=False)


def _randomise_bn(model: nn.Module) -> nn.Module:
    # fresh BNs are identities: random statistics make "reproduces the teacher" a real check
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.3, 0.3)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: extra threads only spin
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def decomps():
    torch.manual_seed(0)
    return {n: decompose(_randomise_bn(_model(n)).eval(), 32) for n in FAMILY_MODELS + ["mini_basic"]}


def _unique_jobs(d, preset, by_shape=False):
    """(slot, teacher block, ops): each (op, shapes, stride, teacher op) once — the same op on the
    same shapes builds the same module, so repeated identical slots add no coverage. by_shape:
    ignore the teacher op too (it only changes the initial weights)."""
    seen, jobs = set(), []
    for slot, block in zip(d.slots, d.blocks):
        ops = candidates(slot, preset)
        assert ops[0] == "keep" and len(ops) == len(set(ops)), (slot.name, ops)
        key = lambda op: (op, slot.in_shape, slot.out_shape, slot.stride,  # noqa: E731
                          "" if by_shape and op != "keep" else slot.teacher_op)
        todo = [op for op in ops if key(op) not in seen]
        seen.update(key(op) for op in todo)
        if todo:
            jobs.append((slot, block, todo))
    return jobs


def _build_run_backprop(d, preset, by_shape=False):
    n = 0
    for slot, block, ops in _unique_jobs(d, preset, by_shape):
        x = torch.randn(2, *slot.in_shape, requires_grad=True)
        for op in ops:
            m = build(op, slot, block).train()
            y = m(x)
            assert tuple(y.shape[1:]) == tuple(slot.out_shape), (slot.name, op)
            y.square().mean().backward()
            grads = [p.grad for p in m.parameters() if p.requires_grad]
            assert x.grad is not None and all(g is not None for g in grads), (slot.name, op)
            x.grad = None
            n += 1
    return n


@pytest.mark.parametrize("text", ["ir_k5_e3_se25_silu", "er_k3_e4_relu", "ds_k3_relu6", "conv_k3_hswish",
                                  "bot_k3_e0.25_g32_relu", "basic_k3_relu", "skip", "proj", "keep", "ir_k3_e1",
                                  "ir_k5_e6_se25_hse_hswish", "conv_k3_noskip_silu", "ir_k3_e4.5_relu"])
def test_round_trip(text):
    assert encode(decode(text)) == text


def test_decode_fields_and_canonical_order():
    s = decode("ir_hswish_noskip_se25_k5_hse_e6")
    assert (s.family, s.kernel, s.exp, s.se, s.act, s.flags) == ("ir", 5, 6.0, 25, "hswish", ("hse", "noskip"))
    assert encode(s) == "ir_k5_e6_se25_hse_noskip_hswish"


@pytest.mark.parametrize("bad,msg", [("zz_k3", "unknown op family"), ("ir_k3_e2_foo", "unknown token"),
                                     ("ir_k3", "lacks"), ("ir_k4_e2", "odd"), ("ds_k3_e2", "takes no"),
                                     ("ir_k3_k5_e2", "repeats"), ("", "empty"), ("skip_k3", "takes no"),
                                     ("basic_k3_hse", "unknown token"), ("ir_k3_e0", "positive")])
def test_bad_op_strings(bad, msg):
    with pytest.raises(UserError, match=msg) as e:
        decode(bad)
    assert "\n" not in str(e.value)


def test_bad_use_is_one_line(decomps):
    d = decomps["efficientnet_lite0"]
    strided = next(s for s in d.slots if s.stride == 2)
    with pytest.raises(UserError, match="unknown preset"):
        candidates(d.slots[0], "huge")
    with pytest.raises(UserError, match="skip"):
        build("skip", strided)
    with pytest.raises(UserError, match="keep"):
        build("keep", strided, None)
    with pytest.raises(UserError, match="stride 4"):
        build("ir_k3_e3_relu6", merge(_stride4_span(d)))


def _stride4_span(d):
    """The slots from one stride-2 slot through the next: a span of stride 4."""
    first, second = [i for i, s in enumerate(d.slots) if s.stride == 2][:2]
    return d.slots[first:second + 1]


@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_tiny_and_small_ops_build_run_and_backprop(decomps, model):
    for preset in ("tiny", "small"):
        assert _build_run_backprop(decomps[model], preset) > 0


@pytest.mark.slow
@pytest.mark.parametrize("model", PAPER_MODELS)
def test_paper_ops_build_run_and_backprop_everywhere(decomps, model):
    assert _build_run_backprop(decomps[model], "paper", by_shape=True) > 0


def test_preset_sizes(decomps):
    d = decomps["efficientnet_lite0"]
    slot = next(s for s in d.slots if s.kind == "ir" and s.has_skip)
    sizes = {p: len(candidates(slot, p)) for p in ("tiny", "small", "paper")}
    assert 6 <= sizes["tiny"] <= 10 and 25 <= sizes["small"] <= 40 and sizes["paper"] >= 197, sizes
    ops = candidates(slot, "paper")
    sigs = {Candidate(slot, op).signature for op in ops}
    assert len(sigs) == len(ops)  # distinct ops are distinct signatures (keep signs as the teacher op)
    # cheap variants use the slot's activation; MobileNetV3 slots get its hard-sigmoid SE
    assert all(op.endswith("_relu6") for op in candidates(slot, "tiny")[2:])
    mnv3 = next(s for s in decomps["mobilenetv3_small_050"].slots if "_hse" in s.teacher_op)
    assert any("_se25_hse_" in op for op in candidates(mnv3, "small"))


def test_tiny_fused_adds_fused_mbconvs_to_stride2_slots_only(decomps):
    d = decomps["efficientnet_lite0"]
    for slot in d.slots:
        tiny, fused = candidates(slot, "tiny"), candidates(slot, "tiny-fused")
        extra = [op for op in fused if op not in tiny]
        assert fused[:len(tiny)] == tiny
        if slot.kind == "ir" and slot.stride == 2:
            assert extra == [f"er_k3_e{x}_relu6" for x in (2, 3, 4)], (slot.name, extra)
        else:
            assert extra == [], (slot.name, extra)
    assert any(s.kind == "ir" and s.stride == 2 for s in d.slots)


def test_stride4_span_gets_only_shape_changing_ops(decomps):
    d = decomps["efficientnet_lite0"]
    span = merge(_stride4_span(d))
    assert span.stride == 4
    assert candidates(span, "small") == ["keep", "proj"]
    x = torch.randn(1, *span.in_shape)
    assert tuple(build("proj", span).eval()(x).shape[1:]) == tuple(span.out_shape)


def test_odd_resolution_stride2(decomps):
    base = next(s for s in decomps["efficientnet_lite0"].slots if s.stride == 2)
    slot = Slot(**{**base.__dict__, "in_shape": (base.in_chs, 7, 7), "out_shape": (base.out_chs, 4, 4)})
    x = torch.randn(1, *slot.in_shape)
    for op in candidates(slot, "small")[1:]:
        assert tuple(build(op, slot).eval()(x).shape[1:]) == slot.out_shape, op
    bad = Slot(**{**base.__dict__, "in_shape": (base.in_chs, 7, 7), "out_shape": (base.out_chs, 3, 3)})
    assert candidates(bad, "small") == ["keep"]


@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_teacher_op_rebuilds_every_block_exactly(decomps, model):
    d = decomps[model]
    for slot, block in zip(d.slots, d.blocks):
        assert slot.teacher_op == teacher_op_string(block) != "keep"
        m, inherited = build_with_info(slot.teacher_op, slot, block)
        x = torch.randn(2, *slot.in_shape)
        with torch.no_grad():
            err = (m.eval()(x) - block.eval()(x)).abs().max().item()
        assert inherited and err < 1e-5, (model, slot.name, slot.teacher_op, err)


def test_teacher_op_strings(decomps):
    ops = {n: {s.teacher_op for s in decomps[n].slots} for n in FAMILY_MODELS}
    assert ops["efficientnet_lite0"] == {"ds_k3_relu6", "ir_k3_e6_relu6", "ir_k5_e6_relu6"}
    assert "ir_k5_e6_se25_hse_hswish" in ops["mobilenetv3_small_050"]
    assert {"conv_k3_silu", "er_k3_e4_silu", "ir_k3_e4_se25_silu"} <= ops["efficientnetv2_rw_t"]
    assert ops["resnet18"] == {"basic_k3_relu"} and ops["mini_bottleneck"] == {"bot_k3_e0.25_relu"}


def test_lite0_teacher_op_with_inheritance_reproduces_teacher(lite0_decomposition):
    d = lite0_decomposition  # real ImageNet weights
    for i in (0, 1, 2, 5, 10):
        slot, block = d.slots[i], d.blocks[i]
        m, inherited = build_with_info(slot.teacher_op, slot, block)
        assert inherited
        x = torch.randn(2, *slot.in_shape)
        with torch.no_grad():
            assert torch.allclose(m.eval()(x), block(x), atol=1e-5), (i, slot.teacher_op)


def test_which_ops_inherit(decomps):
    lite = decomps["efficientnet_lite0"]
    ir_slot, ir_block = next((s, b) for s, b in zip(lite.slots, lite.blocks) if s.kind == "ir" and s.has_skip)
    ops = ["ir_k3_e3_relu6", "ir_k7_e8_silu", "ir_k5_e2_se25_relu6", "er_k3_e2_relu6", "conv_k3_relu6"]
    assert [inherits(op, ir_slot, ir_block) for op in ops] == [True, True, True, False, False]
    v2 = decomps["efficientnetv2_rw_t"]
    er_slot, er_block = next((s, b) for s, b in zip(v2.slots, v2.blocks) if s.kind == "er" and s.has_skip)
    assert inherits("er_k3_e2_silu", er_slot, er_block) and inherits("conv_k3_silu", *_cn(v2))
    assert not inherits("ds_k3_relu6", ir_slot, ir_block) and not inherits("skip", ir_slot, ir_block)
    assert not inherits("ir_k3_e3_relu6", ir_slot, None)
    r18 = decomps["resnet18"]
    assert inherits("basic_k5_relu", r18.slots[0], r18.blocks[0])
    bot = decomps["mini_bottleneck"]
    assert inherits("bot_k3_e0.125_relu", bot.slots[1], bot.blocks[1])


def _cn(d):
    return next((s, b) for s, b in zip(d.slots, d.blocks) if s.kind == "cn")


def test_wider_candidate_starts_at_the_teacher(decomps):
    d = decomps["efficientnet_lite0"]
    slot, block = next((s, b) for s, b in zip(d.slots, d.blocks) if s.kind == "ir" and s.has_skip)
    x = torch.randn(2, *slot.in_shape)
    with torch.no_grad():
        wide = build("ir_k5_e8_relu6", slot, block).eval()(x)  # e8 > e6, k5 > k3: zero-padded
        assert torch.allclose(wide, block.eval()(x), atol=1e-5)


def test_inherited_and_refit_candidate_starts_closer_than_random(lite0, lite0_decomposition):
    from hant_trt.data import EmbeddedDataset
    from hant_trt.teacher.capture import capture
    from hant_trt.ops.refit import refit_readout

    d = lite0_decomposition
    slot, block = d.slots[4], d.blocks[4]
    assert slot.teacher_op == "ir_k5_e6_relu6"
    ds = EmbeddedDataset(lite0.data_config, length=16, split="eval")
    acts, _ = capture(d, torch.stack([ds[i][0] for i in range(16)]))
    x, ref = acts[4], acts[5]  # the slot's real input and output on photos
    fit, held = slice(0, 8), slice(8, 16)

    def err(m):
        with torch.no_grad():
            return ((m.eval()(x[held]) - ref[held]) ** 2).mean().item()

    inh = build("ir_k3_e3_relu6", slot, block)      # e3 from the e6 teacher: half its hidden channels
    torch.manual_seed(0)
    rnd = build("ir_k3_e3_relu6", slot, None)
    before = err(inh)
    assert before < err(rnd)                         # inheriting alone already beats random init
    assert refit_readout(inh, x[fit], ref[fit]) and refit_readout(rnd, x[fit], ref[fit])
    assert err(inh) < 0.6 * before                   # the least-squares read-out helps on unseen images
    assert err(inh) < 0.85 * err(rnd)                # and inheriting the teacher's channels beats random


def test_signature_and_cost(decomps):
    d = decomps["efficientnet_lite0"]
    slot = next(s for s in d.slots if s.teacher_op == "ir_k3_e6_relu6" and s.has_skip)
    keep = Candidate(slot, "keep")
    same = Candidate(slot, slot.teacher_op)
    c, h, w = slot.in_shape
    assert keep.signature == same.signature == f"ir_k3_e6_relu6|{c}x{h}x{w}|{c}x{h}x{w}|s1"
    assert Candidate(slot, "ir_relu6_e6_k3").signature == keep.signature   # canonicalised
    assert (same.params, same.macs) == (keep.params, keep.macs) == (slot.params, slot.macs)
    small = Candidate(slot, "ir_k3_e2_relu6")
    assert small.macs < keep.macs and small.params < keep.params
    # 1x1 expand + 3x3 dw + 1x1 project at e2 (no SE): MACs counted from the built module
    mid = 2 * c
    assert small.macs == h * w * (c * mid + 9 * mid + mid * c)


def test_span_candidates_build(decomps):
    d = decomps["efficientnet_lite0"]
    span = merge(d.slots[1:3])
    assert span.name == "1-2" and span.stride == 2
    ops = candidates(span, "tiny")
    assert "proj" in ops and "skip" not in ops
    x = torch.randn(1, *span.in_shape)
    blocks = nn.Sequential(d.blocks[1], d.blocks[2])
    for op in ops[1:]:
        if REGISTRY[decode(op).family].teacher_bound:   # `es`: slot 1 subsamples itself, nothing to move
            with pytest.raises(UserError, match="stride-1 depthwise conv"):
                build(op, span, blocks)
            continue
        assert tuple(build(op, span).eval()(x).shape[1:]) == tuple(span.out_shape)


def test_user_registers_a_family_and_a_preset_without_editing_the_core(decomps):
    from hant_trt.ops.layers import check_stride, conv

    @register_family("pool", options=("kernel",), required=("kernel",), flags=("maxp",),
                     validate=lambda spec, slot: check_stride(slot, "pool"),
                     doc="kxk average pool + 1x1 conv")
    def build_pool(spec, slot, teacher):
        p = (nn.MaxPool2d if "maxp" in spec.flags else nn.AvgPool2d)(spec.kernel, slot.stride, spec.kernel // 2)
        return nn.Sequential(p, conv(slot.in_chs, slot.out_chs), nn.BatchNorm2d(slot.out_chs)), False

    @register_preset("pools")
    def pools(slot):
        return ["pool_k3", "pool_k3_maxp", "pool_k5", "pool_k3"]

    try:
        slot = decomps["resnet18"].slots[2]
        assert candidates(slot, "pools") == ["keep", "pool_k3", "pool_k3_maxp", "pool_k5"]
        x = torch.randn(1, *slot.in_shape)
        assert tuple(build("pool_k5_maxp", slot).eval()(x).shape[1:]) == slot.out_shape
        with pytest.raises(UserError, match="takes no"):
            decode("pool_k3_e2")
    finally:
        REGISTRY.pop("pool")
        PRESETS.pop("pools")
    with pytest.raises(ValueError):
        register_family("bad_code")


def _residual_pair(d):
    """Two consecutive residual MBConv slots with the same kernel."""
    for i in range(len(d.slots) - 1):
        a, b = d.slots[i], d.slots[i + 1]
        if a.kind == b.kind == "ir" and a.has_skip and b.has_skip and a.kernel == b.kernel:
            return i
    raise AssertionError("no residual pair")


def test_fused_span_starts_as_its_blocks_in_parallel(decomps):
    from hant_trt.ops.families.mbconv import merge_parallel

    d = decomps["efficientnet_lite0"]
    i = _residual_pair(d)
    b1, b2 = d.blocks[i].eval(), d.blocks[i + 1].eval()
    span = merge(d.slots[i:i + 2])
    x = torch.randn(2, *span.in_shape)
    with torch.no_grad():
        parallel = b1(x) + b2(x) - x                       # x + f1(x) + f2(x)
        merged = merge_parallel([b1, b2])
        assert torch.allclose(merged(x), parallel, atol=1e-4)
        e = d.slots[i].expansion + d.slots[i + 1].expansion
        op = f"ir_k{span.kernel}_e{e:g}_relu6"
        m, inherited = build_with_info(op, span, nn.Sequential(b1, b2))
        assert inherited and torch.allclose(m.eval()(x), parallel, atol=1e-4)
        # narrower fused ops inherit the most important merged channels
        assert build_with_info(f"ir_k{span.kernel}_e3_relu6", span, nn.Sequential(b1, b2))[1]
    shape_changing = next(b for s, b in zip(d.slots, d.blocks) if s.kind == "ir" and not s.has_skip)
    assert merge_parallel([b1]) is None and merge_parallel([shape_changing, b1]) is None


def test_fused_span_with_one_shape_changing_block_inherits_it(decomps):
    d = decomps["efficientnet_lite0"]
    i = next(k for k in range(len(d.slots) - 1)
             if d.slots[k].kind == "ir" and not d.slots[k].has_skip and d.slots[k + 1].has_skip)
    span = merge(d.slots[i:i + 2])
    x = torch.randn(2, *span.in_shape)
    m, inherited = build_with_info(d.slots[i].teacher_op, span, nn.Sequential(d.blocks[i], d.blocks[i + 1]))
    with torch.no_grad():                                  # starts as block i with block i+1 skipped
        assert inherited and torch.allclose(m.eval()(x), d.blocks[i].eval()(x), atol=1e-5)


def test_span_presets_are_fused_mbconvs(decomps):
    d = decomps["efficientnet_lite0"]
    i = _residual_pair(d)
    span = merge(d.slots[i:i + 2])
    for preset, n in (("tiny", 2), ("small", 6)):
        ops = candidates(span, preset)
        assert ops[:2] == ["keep", "skip"] and len(ops) == 2 + n
        assert all(op.startswith(f"ir_k{span.kernel}_") for op in ops[2:])


def test_early_stride_keeps_every_weight_and_moves_the_subsampling(decomps):
    """`es` on Lite0's span 0-1 (ds, then the stride-2 ir) is the teacher's two blocks with slot 1's
    stride moved into slot 0's depthwise conv: exactly slot 0 at full resolution, subsampled, then
    slot 1 at stride 1 (a stride-2 conv is its stride-1 output at even positions, and everything
    between is pointwise). `es_k5` starts as `es`; the signature names the blocks."""
    import copy

    d = decomps["efficientnet_lite0"]
    span = merge(d.slots[0:2])
    assert span.stride == 2 and span.teacher_op == f"{d.slots[0].teacher_op}+{d.slots[1].teacher_op}"
    assert "es" not in candidates(span, "tiny")        # measured not worth its phase-1 time on Lite0
    blocks = nn.Sequential(d.blocks[0], d.blocks[1])
    m, inherited = build_with_info("es", span, blocks)
    m5, inherited5 = build_with_info("es_k5", span, blocks)
    assert inherited and inherited5
    assert m5.blocks[0].conv_dw.kernel_size == (5, 5) and m5.blocks[1].conv_dw.kernel_size == (3, 3)
    x = torch.randn(2, *span.in_shape)
    slot1 = copy.deepcopy(d.blocks[1]).eval()
    slot1.conv_dw.stride = (1, 1)
    with torch.no_grad():
        want = slot1(d.blocks[0].eval()(x)[:, :, ::2, ::2])
        assert torch.allclose(m.eval()(x), want, atol=1e-5)
        assert torch.allclose(m5.eval()(x), want, atol=1e-5)
        assert not torch.allclose(m(x), blocks.eval()(x), atol=1e-2)   # not the teacher: distillation's work
    assert d.blocks[1].conv_dw.stride == (2, 2) and d.blocks[0].conv_dw.stride == (1, 1)   # teacher untouched
    sig = Candidate(span, "es").signature
    assert sig.startswith(f"es[{span.teacher_op}]|") and sig != Candidate(span, "es_k5").signature
    with pytest.raises(UserError, match="needs the teacher's blocks"):
        build("es", span)
    with pytest.raises(UserError, match="span of blocks with stride 2"):
        build("es", d.slots[1], d.blocks[1])


def test_aligned_widths_replace_a_width_between_two_blocks_by_both(decomps):
    """`distill.align`: an ir/er op whose hidden width falls between two multiples of N is offered
    at both (the upper one within the teacher's width); aligned ops, other families and align 0
    stay as they are; the aligned ops build at exactly those widths."""
    from hant_trt.ops.layers import make_divisible
    from hant_trt.ops.presets import aligned

    d = decomps["efficientnet_lite0"]
    slot, block = d.slots[2], d.blocks[2]
    assert (slot.in_chs, slot.expansion, slot.kernel) == (24, 6.0, 3)
    assert aligned("ir_k3_e5_relu6", slot, 16) == ["ir_k3_e4.67_relu6", "ir_k3_e5.33_relu6"]   # 120 → 112, 128
    assert aligned("ir_k3_e4_relu6", slot, 16) == ["ir_k3_e4_relu6"]                           # 96
    assert aligned("ir_k3_e5.7_relu6", slot, 32) == ["ir_k3_e5.33_relu6"]       # 136 → 128; 160 > the teacher's 144
    assert aligned("ds_k3_relu6", slot, 16) == ["ds_k3_relu6"]
    assert aligned("ir_k3_e5_relu6", slot, 0) == ["ir_k3_e5_relu6"]
    plain, even = candidates(slot, "tiny"), candidates(slot, "tiny", 16)
    assert candidates(slot, "tiny", 0) == plain
    assert "ir_k3_e5_relu6" in plain and "ir_k3_e5_relu6" not in even
    widths = {}
    for op in even:
        spec = decode(op) if op not in ("keep", "skip", "proj") else None
        if spec is not None and spec.family in ("ir", "er"):
            widths[op] = make_divisible(slot.in_chs * spec.exp)
            assert widths[op] % 16 == 0, op
    assert {112, 128, 64, 80, 16, 32} <= set(widths.values())
    m = build("ir_k3_e4.67_relu6", slot, block)
    assert m.conv_pw.out_channels == 112 and m(torch.randn(2, *slot.in_shape)).shape[1:] == tuple(slot.out_shape)
