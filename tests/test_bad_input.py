"""Bad input on every subcommand: one stderr line naming the problem, exit 2, no traceback, no stage
marked done and nothing written for a refused command. In-process (cli.main) so the suite stays
fast; the last tests run the real process for its exit code."""

import json
import os

import pytest

from conftest import run_cli
from hant_trt.cli import main

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def refused(argv, needle, capsys) -> str:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:          # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder) -> dict:
    """Every file under `folder` with its bytes (nothing there: {})."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_config(tmp_path, text: str, run_dir=None):
    cfg = tmp_path / "c.toml"
    teacher = '[teacher]\nweights = "random"\n'
    text = text.replace("[teacher]\n", teacher) if "[teacher]\n" in text else teacher + text
    cfg.write_text(f'run_dir = "{run_dir or tmp_path / "run"}"\n' + text)
    return cfg


# -- config values, checked at load before anything is written ------------------------------------
CONFIG_CASES = [
    ('[distill]\nsteps = "abc"\n', 'distill.steps = "abc": expected an integer >= 1'),
    ("[distill]\nsteps = -5\n", "distill.steps = -5"),
    ("[distill]\nsteps = 0\n", "distill.steps = 0"),
    ("[distill]\nsteps = 2.5\n", "distill.steps = 2.5"),
    ("[distill]\nbatch_size = 0\n", "distill.batch_size = 0"),
    ("[distill]\nlr = -1.0\n", "distill.lr = -1.0: expected a number > 0"),
    ('[distill]\nbn = "fozen"\n', "expected one of frozen, train"),
    ('[distill]\ndevice = "tpu"\n', "distill.device"),
    ('[distill]\npreset = "huge"\n', "distill.preset"),
    ("[distill]\nslots = [1, -2]\n", "distill.slots"),
    ('[distill]\nslots = "1,2"\n', "distill.slots"),
    ("[distill]\nfisher = 2.0\n", "distill.fisher = 2.0"),
    ('[distill]\nkeep_best = "yes"\n', "expected true or false"),
    ("[distill]\ncheckpoint_every = 0\n", "distill.checkpoint_every"),
    ("[teacher]\nresolution = 16\n", "teacher.resolution"),
    ("[data]\neval_fraction = 1.5\n", "data.eval_fraction = 1.5"),
    ("[data]\nmax_images = 0\n", "data.max_images"),
    ("[score]\nbatch_size = -1\n", "score.batch_size"),
    ('[profile]\nbackend = "tpu"\n', "expected one of ort, torch, tensorrt"),
    ('[profile]\nprecisions = ["fp8"]\n', "profile.precisions"),
    ("[profile]\nprecisions = []\n", "non-empty list"),
    ('[profile]\nprecisions = "fp32"\n', "profile.precisions"),
    ('[profile]\ncalib_method = "median"\n', "profile.calib_method"),
    ('[profile]\nint8_layout = "arm"\n', "profile.int8_layout"),
    ('[profile]\ncontext = "both"\n', "profile.context"),
    ("[profile]\nmax_seconds = 0\n", "profile.max_seconds"),
    ("[profile]\nbatch = 0\n", "profile.batch"),
    ('[search]\nbudget = "fast"\n', "cannot read budget 'fast'"),
    ('[search]\nbudget = "speedup=0.5"\n', "slower than the teacher"),
    ('[search]\nbudget = "1.5x"\n', "slower than the teacher"),
    ('[search]\nmetric = "bogus"\n', 'search.metric = "bogus"'),
    ('[search]\nsolver = "gurobi"\n', "search.solver"),
    ('[search]\ntime_limit = "abc"\n', "search.time_limit"),
    ("[search]\nsweep = -1\n", "search.sweep = -1"),
    ('[search]\nlatency_model = "sum"\n', "search.latency_model"),
    ('[search]\ninteractions = "all"\n', "search.interactions"),
    ('[search]\nmax_params = "lots"\n', "cannot read the params limit"),
    ("[search]\nskip_weight = 0\n", "search.skip_weight"),
    ('[search]\nexclude = ["14-15"]\n', "'14-15' is not SLOTS:OP"),
    ('[search]\nexclude = ["15-14:*"]\n', "ends before it starts"),
    ('[build]\ntrain = "everything"\n', "expected one of replaced, all"),
    ('[build]\nbn_recalibrate = "some"\n', "build.bn_recalibrate"),
    ("[build]\nfinetune_steps = -1\n", "build.finetune_steps"),
    ("[build]\nmixup = -0.5\n", "build.mixup"),
    ('[build]\nqat = true\nbn = "train"\n', 'build.qat = true needs build.bn = "frozen"'),
    ("[build]\nema = 1.0\n", "build.ema"),
    ("[build]\nsoup = 17\n", "build.soup"),
    ('[build]\nfinetune_images = "eval"\n', "build.finetune_images"),
    ('[build]\nfinetune_images = "all"\n', 'build.finetune_images = "all" needs data.train to be a folder'),
    ('[build]\nstepz = 3\n', "unknown key 'stepz'"),
    ("[nosuch]\nx = 1\n", "unknown key 'nosuch'"),
]


@pytest.mark.parametrize("text,needle", CONFIG_CASES, ids=[c[1][:40] for c in CONFIG_CASES])
def test_config_value_refused_before_any_stage(tmp_path, capsys, text, needle):
    cfg = write_config(tmp_path, text)
    refused(["run", cfg], needle, capsys)
    assert not (tmp_path / "run").exists()


def test_config_section_that_is_not_a_table(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("distill = 5\n")
    refused(["run", cfg], "[distill] must be a table", capsys)


@pytest.mark.parametrize("text,needle", [
    ("[distill\n", "not valid TOML"),
    (None, "not found"),
])
def test_config_file_unreadable(tmp_path, capsys, text, needle):
    cfg = tmp_path / "c.toml"
    if text is not None:
        cfg.write_text(text)
    refused(["run", cfg], needle, capsys)


SET_CASES = [
    ("distill=5", "'distill' is a section"),
    ("search.time_limit=abc", 'search.time_limit = "abc"'),
    ('search.sweep="abc"', 'search.sweep = "abc"'),
    ("distill.steps=1.5", "distill.steps = 1.5"),
    ("build.keep_best=maybe", "build.keep_best"),
    ("profile.precisions=fp32", "profile.precisions"),
    ("nosuch.key=1", "unknown config section 'nosuch'"),
    ("distill.nosuch=1", "unknown config key 'distill.nosuch'"),
    ("distill.steps", "expects section.key=value"),
    ("search.budget=speedup=0.5", "slower than the teacher"),
    ('search.exclude=["*-3:skip"]', "takes no range"),
]


@pytest.mark.parametrize("pair,needle", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_set_value_refused(tmp_path, capsys, pair, needle):
    cfg = write_config(tmp_path, "")
    refused(["run", cfg, "--set", pair], needle, capsys)
    assert not (tmp_path / "run").exists()


# -- stage subcommands: flags are checked before the run directory is touched --------------------
FLAG_CASES = [
    (["search", "--metric", "bogus"], 'search.metric = "bogus"'),
    (["search", "--budget", "speedup=0.5"], "slower than the teacher"),
    (["search", "--budget", "2 parsecs"], "cannot read budget"),
    (["search", "--sweep", "abc"], "invalid int value"),
    (["distill", "--steps", "abc"], "invalid int value"),
    (["distill", "--steps", "-5"], "distill.steps = -5"),
    (["distill", "--slots", "1,x"], "--slots must be comma-separated"),
    (["distill", "--preset", "huge"], "distill.preset"),
    (["distill", "--bogus"], "unrecognized arguments: --bogus"),
    (["profile", "--backend", "tpu"], "profile.backend"),
    (["profile", "--precision", "fp8"], "profile.precisions"),
    (["score", "--set", "score.batch_size=0"], "score.batch_size = 0"),
    (["build", "--set", "build.train=everything"], "build.train"),
]


@pytest.mark.parametrize("args,needle", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_stage_flags_refused_on_a_new_run_directory(tmp_path, capsys, args, needle):
    run = tmp_path / "run"
    refused([args[0], run, *args[1:]], needle, capsys)
    assert not run.exists()


@pytest.fixture()
def existing_run(tmp_path):
    """A run directory with a saved config and the teacher stage done (written by hand: no work)."""
    from hant_trt.config import RunConfig
    from hant_trt.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.update(config=RunConfig(run_dir=str(run.root)).to_dict())
    run.set_stage("teacher", "done", "fp", {})
    return run.root


@pytest.mark.parametrize("args,needle", [
    (["search", "--metric", "bogus"], "search.metric"),
    (["search", "--set", "search.metric=bogus"], "search.metric"),
    (["distill", "--steps", "-5"], "distill.steps"),
    (["build", "--set", "build.bn_recalibrate=some"], "build.bn_recalibrate"),
])
def test_refused_value_is_not_saved_for_the_next_run(existing_run, capsys, args, needle):
    before = snapshot(existing_run)
    refused([args[0], existing_run, *args[1:]], needle, capsys)
    assert snapshot(existing_run) == before


def test_stage_not_finished_leaves_nothing_done(existing_run, capsys):
    refused(["search", existing_run], "stage 'score' has not finished", capsys)
    stages = json.loads((existing_run / "run.json").read_text())["stages"]
    assert [s for s, st in stages.items() if st["status"] == "done"] == ["teacher"]


# -- the run directory and its manifest ---------------------------------------------------------
@pytest.mark.parametrize("manifest,needle", [
    ([1, 2], "it holds a list"),
    ({"stages": {"teacher": "done"}}, "stage 'teacher' is a str"),
    ({"stages": {"teacher": {"status": "finished"}}}, "status 'finished'"),
    ({"stages": []}, "'stages' is a list"),
    ({"config": "x"}, "'config' is a str"),
    ({"stages": {"teacher": {"colour": 1}}}, "unknown field(s) colour"),
])
def test_corrupt_manifest_is_one_line(tmp_path, capsys, manifest, needle):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(manifest))
    before = snapshot(run)
    refused(["search", run], needle, capsys)
    assert snapshot(run) == before


def test_manifest_not_json(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{not json")
    refused(["score", run], "unreadable or corrupt", capsys)


@pytest.mark.parametrize("args,needle", [
    (["--to", "nosuch"], "--to: unknown stage 'nosuch'"),
    (["--from", "nosuch"], "--from: unknown stage 'nosuch'"),
    (["--from", "build", "--to", "teacher"], "--to teacher comes before --from build"),
])
def test_run_stage_names(tmp_path, capsys, args, needle):
    refused(["run", write_config(tmp_path, ""), *args], needle, capsys)
    assert not (tmp_path / "run").exists()


def test_run_directory_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cfg = write_config(tmp_path, "", run_dir=tmp_path / "file" / "run")
    refused(["run", cfg], "is a regular file, not a folder", capsys)


def test_run_directory_onto_a_regular_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    refused(["score", tmp_path / "file"], "is not a directory", capsys)
    assert (tmp_path / "file").read_text() == "x"


def test_run_directory_unwritable(tmp_path, capsys):
    if not ROOT_USER:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            refused(["score", locked / "run"], "not writable", capsys)
        finally:
            locked.chmod(0o700)
        return
    # root writes past permission bits: use file systems that refuse everyone (Linux)
    if not (os.path.isdir("/sys") and os.path.isdir("/proc/1")):
        pytest.skip("no /sys or /proc to be refused by")
    refused(["score", "/sys/hant-trt-test/run"], "Operation not permitted", capsys)
    refused(["score", "/proc/1/hant-trt-test/run"], "is not writable", capsys)


# -- tools -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    import torch

    from hant_trt.latency.export import export_onnx

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    return export_onnx(net, (1, 3, 8, 8), tmp_path_factory.mktemp("m") / "m.onnx")


def test_bench_batch_zero(onnx_file, capsys):
    refused(["bench", onnx_file, "--batch", "0"], "--batch must be an integer >= 1, got 0", capsys)


@pytest.mark.parametrize("args,needle", [
    (["--iterations", "abc"], "invalid int value"),
    (["--iterations", "0"], "--iterations"),
    (["--duration", "soon"], "invalid float value"),
    (["--backend", "torch"], "times PyTorch modules"),
])
def test_bench_options(onnx_file, capsys, args, needle):
    refused(["bench", onnx_file, *args], needle, capsys)


def test_bench_missing_model(tmp_path, capsys):
    refused(["bench", tmp_path / "nope.onnx"], "not found", capsys)


def test_bench_not_an_onnx(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\nmore garbage\n")
    refused(["bench", bad], "bad.onnx", capsys)


@pytest.mark.parametrize("where,needle", [("dir", "is a directory"), ("under_file", "is a regular file")])
def test_bench_export_times_path_checked_before_timing(onnx_file, tmp_path, capsys, where, needle):
    (tmp_path / "file").write_text("x")
    out = tmp_path if where == "dir" else tmp_path / "file" / "t.json"
    refused(["bench", onnx_file, "--export-times", out, "--duration", "0", "--iterations", "1"], needle, capsys)


@pytest.mark.parametrize("where,needle", [("dir", "is a directory"), ("under_file", "is a regular file"),
                                          ("none", "needs --output")])
def test_lut_export_output(tmp_path, capsys, where, needle):
    (tmp_path / "file").write_text("x")
    out = {"dir": [str(tmp_path)], "under_file": [str(tmp_path / "file" / "x.csv")], "none": []}[where]
    args = ["lut", "export", "--lut", tmp_path / "l.sqlite"] + (["--output", *out] if out else [])
    refused(args, needle, capsys)
    assert not (tmp_path / "l.sqlite").exists()


def test_lut_unknown_action(capsys):
    refused(["lut", "purge"], "invalid choice: 'purge'", capsys)


def test_export_triton_onnx_that_ort_cannot_load(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    p = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    refused(["export-triton", p, tmp_path / "repo"], "ONNX Runtime cannot load bad.onnx", capsys)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("args,needle", [
    (["--instance-count", "0"], "--instance-count must be an integer >= 1"),
    (["--max-batch-size", "abc"], "--max-batch-size must be an integer >= 0"),
    (["--instance-kind", "tpu"], "instance kind"),
    (["--name", "a/b"], "Triton model name"),
])
def test_export_triton_options(onnx_file, tmp_path, capsys, args, needle):
    refused(["export-triton", onnx_file, tmp_path / "repo", *args], needle, capsys)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("where,needle", [("file", "is a regular file, not a folder"),
                                          ("under_file", "is a regular file, not a folder")])
def test_export_triton_repository_path(onnx_file, tmp_path, capsys, where, needle):
    (tmp_path / "file").write_text("x")
    repo = tmp_path / "file" if where == "file" else tmp_path / "file" / "repo"
    refused(["export-triton", onnx_file, repo], needle, capsys)
    assert (tmp_path / "file").read_text() == "x"


def test_export_triton_model_folder_is_a_file(onnx_file, tmp_path, capsys):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "m").write_text("x")
    refused(["export-triton", onnx_file, tmp_path / "repo", "--name", "m"], "cannot write", capsys)


def test_teacher_and_top_level_usage(capsys):
    refused(["teacher", "efficientnet_lite0", "--resolution", "abc"], "invalid int value", capsys)
    refused(["nosuch"], "invalid choice: 'nosuch'", capsys)


# -- data ----------------------------------------------------------------------------------------
def test_bad_labels_row_names_the_line_through_the_cli(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (i * 40, 0, 0)).save(data / f"{i}.png")
    (data / "labels.tsv").write_text("file\tclass_index\n0.png\t1\n1.png\tcat\n2.png\t2\n")
    cfg = write_config(tmp_path, f'[data]\ntrain = "{data}"\n[distill]\nsteps = 1\nslots = [1]\n')
    refused(["run", cfg, "--to", "distill"], "labels.tsv:3: class_index 'cat' is not an integer", capsys)
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    assert stages.get("distill", {}).get("status") != "done"


# -- the real process: exit code and stderr --------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["run", "CFG", "--set", "distill=5"], "'distill' is a section"),
    (["bench", "x.onnx", "--batch", "abc"], "invalid int value"),
])
def test_real_process_one_line_exit_2(tmp_path, args, needle):
    cfg = write_config(tmp_path, "")
    r = run_cli(*[str(cfg) if a == "CFG" else a for a in args])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,needle", [
    (["--from", "nosuch"], "--from: unknown stage 'nosuch'"),
    (["--set", "distill.steps=0"], "distill.steps = 0"),
    (["--set", "search.budget=speedup=0.5"], "slower than the teacher"),
    (["--run-dir", "FILE"], "is not a directory"),
    (["--engines-dir", "FILE"], "--engines-dir"),
])
def test_demo_refused_before_any_work(tmp_path, capsys, args, needle):
    (tmp_path / "file").write_text("x")
    args = [str(tmp_path / "file") if a == "FILE" else a for a in args]
    run_dir = [] if "--run-dir" in args else ["--run-dir", str(tmp_path / "run")]
    refused(["demo", *run_dir, *args], needle, capsys)
    assert not (tmp_path / "run").exists() and (tmp_path / "file").read_text() == "x"


def test_build_engines_dir_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    refused(["build", tmp_path / "run", "--engines-dir", tmp_path / "file" / "e"], "is a regular file", capsys)
    assert not (tmp_path / "run").exists()


def test_set_can_fix_a_bad_file_value_before_the_check(tmp_path, capsys):
    cfg = write_config(tmp_path, "[distill]\nsteps = -5\n")
    refused(["run", cfg, "--set", "distill.steps=1", "--set", "search.metric=bogus"], "search.metric", capsys)
    refused(["distill", tmp_path / "run", "--config", cfg], "distill.steps = -5", capsys)
    assert not (tmp_path / "run").exists()


def test_options_fix_a_bad_file_value_too(tmp_path, capsys):
    cfg = write_config(tmp_path, "[distill]\nsteps = -5\n")
    refused(["distill", tmp_path / "run", "--config", cfg, "--steps", "2", "--preset", "huge"], "distill.preset",
            capsys)
