import json

import pytest

from conftest import run_cli


def test_help_lists_stages_and_version():
    r = run_cli("--help")
    assert r.returncode == 0
    for stage in ("teacher", "distill", "score", "profile", "search", "build", "run", "demo", "bench"):
        assert stage in r.stdout
    v = run_cli("--version")
    assert v.returncode == 0 and "hant-trt" in v.stdout


def test_teacher_lists_16_slots_json():
    r = run_cli("teacher", "efficientnet_lite0", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert len(rec["slots"]) == 16 and rec["weights"] == "offline-lite0"
    assert rec["slots"][15]["out_shape"] == [320, 7, 7]


@pytest.mark.parametrize("args,needle", [
    (("teacher", "no_such_model"), "unknown timm model"),
    (("teacher", "efficientnet_lite0", "--weights", "/nope.pth"), "not found"),
    (("teacher", "efficientnet_lite0", "--resolution", "16"), "below 32"),
])
def test_bad_input_one_line_exit_2(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_weights_for_other_architecture_exit_2(tmp_path):
    import timm
    from safetensors.torch import save_file

    p = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}, str(p))
    r = run_cli("teacher", "efficientnet_lite0", "--weights", str(p))
    assert r.returncode == 2 and "do not fit" in r.stderr


def test_empty_data_folder_exit_2(tmp_path):
    cfg = tmp_path / "c.toml"
    (tmp_path / "empty").mkdir()
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\n[data]\ntrain = "{tmp_path / "empty"}"\n'
                   '[teacher]\nweights = "random"\n')
    r = run_cli("distill", str(tmp_path / "run"), "--config", str(cfg), "--steps", "1")
    assert r.returncode == 2 and "no readable image" in r.stderr, r.stderr


def test_bad_config_key_exit_2(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[distill]\nstepz = 3\n')
    r = run_cli("run", str(cfg))
    assert r.returncode == 2 and "unknown key 'stepz'" in r.stderr
