"""Device correctness: CPU tests that catch tensors made on the wrong device (the meta device refuses
to mix with CPU tensors; factory calls in device paths are read from the source), and CUDA tests
that skip without a GPU (`tools/validate_gpu.py` runs them on one)."""

import ast
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from hant_trt.config import RunConfig
from hant_trt.latency.backends import get_backend

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# modules whose tensors live where the training or scoring runs; every tensor factory there names a
# device, except the listed CPU-side ones (seeded batches and labels made before `.to(device)`)
DEVICE_PATHS = ["hant_trt/ops/refit.py", "hant_trt/distill/train.py", "hant_trt/distill/graphed.py",
                "hant_trt/teacher/capture.py", "hant_trt/distill/score.py", "hant_trt/student/finetune.py", "hant_trt/training.py",
                "hant_trt/quant/qat.py"]
FACTORIES = {"eye", "zeros", "ones", "full", "empty", "arange", "randn", "rand", "randint", "tensor", "linspace"}
CPU_SIDE = {("hant_trt/training.py", "step_items"), ("hant_trt/training.py", "labelled_batch_for_step"),
            ("hant_trt/student/finetune.py", "mix_batch"),
            ("hant_trt/quant/qat.py", "_symmetric")}     # a 0-dim scale: CPU scalars mix with CUDA tensors


def _factory_calls_without_device(path: Path):
    tree = ast.parse(path.read_text())
    rel = str(path.relative_to(ROOT))
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or (rel, fn.name) in CPU_SIDE:
            continue
        for node in ast.walk(fn):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and node.func.attr in FACTORIES and not any(k.arg == "device" for k in node.keywords)):
                yield f"{rel}:{node.lineno} torch.{node.func.attr} in {fn.name}"


def test_device_paths_name_a_device_for_every_tensor_they_make():
    bad = [hit for p in DEVICE_PATHS for hit in _factory_calls_without_device(ROOT / p)]
    assert not bad, bad


def test_the_source_check_finds_a_factory_call_without_device(tmp_path):
    src = ROOT / "hant_trt" / "_probe_tmp.py"
    try:
        src.write_text("import torch\n\ndef f(x):\n    return x + torch.eye(3)\n")
        assert list(_factory_calls_without_device(src))
    finally:
        src.unlink(missing_ok=True)


def test_refit_makes_its_tensors_on_the_inputs_device():
    from timm.models._efficientnet_blocks import InvertedResidual

    from hant_trt.ops.refit import refit_readout

    m = InvertedResidual(16, 16, exp_ratio=2.0).to("meta")
    x, t = torch.randn(4, 16, 8, 8, device="meta"), torch.randn(4, 16, 8, 8, device="meta")
    assert refit_readout(m, x, t, max_samples=64)      # sub-sampling rows too


def test_torch_backend_times_a_copy_and_leaves_the_module_alone():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).train()
    before = copy.deepcopy(m.state_dict())
    b = get_backend("torch", device="cpu", batch=4)
    p = b.prepare_module(m, (2, 3, 16, 16))
    t = b.time(p, max_seconds=0.05, warmup_ms=1)
    assert t.count >= 10 and t.median_s > 0 and not t.cuda_graph
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    with pytest.raises(Exception, match="CUDA"):
        b.prepare_module(m, (2, 3, 16, 16), "bf16")


def test_step_batches_equal_batch_for_step():
    from hant_trt.distill.train import step_batches
    from hant_trt.training import batch_for_step

    class Numbers(torch.utils.data.Dataset):
        def __len__(self):
            return 50

        def __getitem__(self, i):
            return torch.full((2,), float(i)) + torch.rand(2), 0

    ds, full = Numbers(), Numbers()
    got = list(step_batches(ds, full, 3, 1, 5, 4, 7, torch.device("cpu")))
    assert len(got) == 4
    for k, x in enumerate(got):
        assert torch.equal(x, batch_for_step(ds, 1 + k, 4, 7))


def _tiny_cfg(run_dir, device) -> RunConfig:
    cfg = RunConfig(run_dir=str(run_dir))
    cfg.teacher.resolution = 96
    cfg.data.train = "embedded"
    d = cfg.distill
    d.preset, d.steps, d.batch_size, d.resolution, d.slots = "tiny", 6, 8, 64, [1, 4]
    d.checkpoint_every, d.warmup_steps, d.device = 3, 2, device
    cfg.score.max_images, cfg.score.batch_size = 16, 8
    return cfg


@cuda
def test_torch_backend_replays_a_cuda_graph_faster_than_eager_launches():
    net = nn.Sequential(*[nn.Conv2d(8, 8, 1) for _ in range(60)])     # launch-bound at batch 1
    graph = get_backend("torch", device="cuda")
    eager = get_backend("torch", device="cuda", cuda_graphs=False)
    assert graph.version() != eager.version()
    for prec in ("fp16", "bf16", "fp32"):
        t = graph.time(graph.prepare_module(net, (1, 8, 16, 16), prec), max_seconds=0.2)
        assert t.cuda_graph and t.device_timed and t.median_s > 0
    tg = graph.time(graph.prepare_module(net, (1, 8, 16, 16), "fp16"), max_seconds=0.3).median_s
    te = eager.time(eager.prepare_module(net, (1, 8, 16, 16), "fp16"), max_seconds=0.3).median_s
    assert tg < te, (tg, te)
    dev = graph.device()
    assert dev.kind == "cuda" and dev.details["cc"] and dev.details["torch"]


@cuda
def test_compiled_module_times_under_a_cuda_graph():
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6()).eval()
    b = get_backend("torch", device="cuda", compile=True)
    t = b.time(b.prepare_module(net, (4, 8, 32, 32), "fp16"), max_seconds=0.2)
    assert t.cuda_graph and "+compile" in b.version()


@cuda
def test_distill_and_score_on_cuda_match_the_cpu(tmp_path):
    from hant_trt.scores import read_scores
    from hant_trt.distill.stage import run_distill, run_score
    from hant_trt.rundir import RunDir

    rows = {}
    for device in ("cuda", "cpu"):
        cfg = _tiny_cfg(tmp_path / device, device)
        run = RunDir(cfg.run_dir)
        run_distill(run, cfg)
        run_score(run, cfg)
        rows[device] = {(r.first, r.op): r for r in read_scores(run.path("scores.csv"))}
    assert rows["cuda"].keys() == rows["cpu"].keys()
    # the same candidates trained the same steps: mixed precision moves KL a little, not the ranking
    for k, r in rows["cuda"].items():
        assert abs(r.kl - rows["cpu"][k].kl) <= 0.05 + 0.25 * rows["cpu"][k].kl, (k, r.kl, rows["cpu"][k].kl)


def _distilled(tmp_path, name: str, device: str, graph: bool) -> dict:
    from safetensors.torch import load_file

    from hant_trt.distill.stage import run_distill
    from hant_trt.rundir import RunDir

    cfg = _tiny_cfg(tmp_path / name, device)
    cfg.distill.cuda_graph = graph
    cfg.distill.full_res_steps = 2          # the last steps at another shape: a second capture
    run = RunDir(cfg.run_dir)
    run_distill(run, cfg)
    return {f"{p.stem}/{k}": v for p in sorted(run.path("candidates").glob("slot*.safetensors"))
            for k, v in load_file(str(p)).items()}


def test_cuda_graph_on_the_cpu_is_said_and_changes_nothing(tmp_path, capfd):
    from hant_trt.distill.stage import distill_fingerprint

    a = _tiny_cfg(tmp_path / "a", "cpu")
    b = copy.deepcopy(a)
    b.distill.cuda_graph = True
    assert distill_fingerprint(a) == distill_fingerprint(b)      # how steps launch, not what they compute
    eager = _distilled(tmp_path, "eager", "cpu", False)
    asked = _distilled(tmp_path, "asked", "cpu", True)
    assert "distill.cuda_graph ignored: training runs on the CPU" in capfd.readouterr().err
    assert eager.keys() == asked.keys() and all(torch.equal(eager[k], asked[k]) for k in eager)


@cuda
def test_distill_replayed_as_a_cuda_graph_trains_as_the_eager_loop(tmp_path):
    """The same candidates, batches and steps, eager and as graph replays (the warm-up runs made
    for capturing are undone; two input shapes, two captures): the weights agree to mixed-precision
    noise."""
    eager = _distilled(tmp_path, "eager", "cuda", False)
    graph = _distilled(tmp_path, "graph", "cuda", True)
    assert eager.keys() == graph.keys()
    for k in eager:
        e, g = eager[k].float(), graph[k].float()
        assert torch.allclose(e, g, atol=2e-2, rtol=2e-2), (k, (e - g).abs().max())
