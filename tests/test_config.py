import dataclasses
from pathlib import Path

import pytest

from hant_trt import atomic, config
from hant_trt.commands import apply_overrides
from hant_trt.errors import UserError
from hant_trt.pipeline import demo_config

ROOT = Path(__file__).resolve().parents[1]


def _sections():
    cfg = config.RunConfig()
    yield "", cfg
    for f in dataclasses.fields(cfg):
        if dataclasses.is_dataclass(getattr(cfg, f.name)):
            yield f.name, getattr(cfg, f.name)


def test_every_field_has_exactly_one_rule():
    for section, obj in _sections():
        names = {f.name for f in dataclasses.fields(obj) if not dataclasses.is_dataclass(getattr(obj, f.name))}
        assert names == set(config.RULES[section]), section or "top level"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.toml")))
def test_shipped_configs_are_valid(path):
    config.load(ROOT / path)


def test_defaults_and_demo_are_valid():
    config.validate(config.RunConfig())
    config.validate(demo_config("x"))


def test_set_reads_json_and_keeps_text_for_string_keys():
    cfg = apply_overrides(config.RunConfig(), ["distill.steps=3", "build.engine_name=123", "search.budget=1x",
                                               'profile.precisions=["fp32", "int8"]', "data.eval=null"])
    assert cfg.distill.steps == 3 and cfg.build.engine_name == "123" and cfg.search.budget == "1x"
    assert cfg.profile.precisions == ["fp32", "int8"] and cfg.data.eval is None


@pytest.mark.parametrize("budget", ["1x", "speedup=1", "0.5x", "speedup=3", "2ms", "500us", "0.002s"])
def test_budgets_at_or_below_the_teacher_pass(budget):
    cfg = config.RunConfig()
    cfg.search.budget = budget
    config.validate(cfg)


def test_error_names_key_value_and_what_is_allowed():
    cfg = config.RunConfig()
    cfg.distill.bn = "fozen"
    with pytest.raises(UserError) as exc:
        config.validate(cfg)
    assert str(exc.value) == 'config: distill.bn = "fozen": expected one of frozen, train'


def test_atomic_writes_turn_path_errors_into_user_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write .*file is a regular file, not a folder"):
        atomic.write_text(tmp_path / "file" / "out.json", "{}")
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match="cannot write .*Is a directory"):
        atomic.write_text(tmp_path / "d", "{}")
    assert not [p for p in (tmp_path / "d").iterdir()]            # no temp file left behind
