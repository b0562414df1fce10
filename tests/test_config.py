"""Config composition, overrides and validation (no training)."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mp_lightning.cli import main
from mp_lightning.config.compose import compose, load_yaml_with_defaults, split_cli_args
from mp_lightning.errors import ConfigError
from tests.conftest import EXPERIMENTS

WARP_TINY = EXPERIMENTS / "metaportrait" / "warp_tiny.yaml"


def test_experiment_extends_its_defaults_and_overrides_win():
    raw = load_yaml_with_defaults(WARP_TINY)
    assert raw.stage == "warp"
    assert raw.logger.mode == "offline"  # from experiments/base/default.yaml
    cfg = compose(WARP_TINY, ["trainer.max_steps=7", "data.batch_size=3", "name=abc"])
    assert cfg.trainer.max_steps == 7
    assert cfg.data.batch_size == 3
    assert cfg.run_dir == "runs/abc"
    # fields nobody set come from the typed schema
    assert cfg.callbacks.checkpoint.save_last is True


def test_overlay_files_are_merged_before_overrides():
    overlay = EXPERIMENTS / "debug" / "ddp_cpu.yaml"
    cfg = compose(WARP_TINY, ["trainer.max_steps=3"], [overlay])
    assert cfg.trainer.strategy == "ddp_spawn" and cfg.trainer.devices == 2
    assert cfg.trainer.max_steps == 3


def test_typo_in_override_names_the_key_and_the_closest_valid_key():
    with pytest.raises(ConfigError) as err:
        compose(WARP_TINY, ["trainer.max_step=3"])
    assert "'trainer.max_step'" in str(err.value)
    assert "did you mean 'trainer.max_steps'" in str(err.value)


def test_typo_inside_the_stage_schema_is_caught():
    with pytest.raises(ConfigError, match="model.optim.lrr"):
        compose(WARP_TINY, ["model.optim.lrr=0.1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        compose(WARP_TINY, ["trainer.max_steps=lots"])


def test_unknown_stage_is_reported_with_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown stage 'wrap'.*did you mean 'warp'"):
        compose(WARP_TINY, ["stage=wrap"])


def test_missing_defaults_file_names_both_files(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("defaults:\n  - nowhere.yaml\nstage: warp\n")
    with pytest.raises(ConfigError, match="nowhere.yaml.*exp.yaml"):
        load_yaml_with_defaults(exp)


def test_wandb_sweep_argument_forms_are_accepted():
    # `${args_no_hyphens}` sends key=value; `${args}` sends --key=value
    cfg = compose(WARP_TINY, ["model.optim.lr=0.001", "--trainer.max_steps=5"])
    assert cfg.model.optim.lr == pytest.approx(0.001) and cfg.trainer.max_steps == 5


def test_split_cli_args():
    overlays, overrides = split_cli_args(["a.yaml", "x=1", "b.yml", "y=z.yaml"])
    assert overlays == ["a.yaml", "b.yml"] and overrides == ["x=1", "y=z.yaml"]


def test_print_config_command(capsys):
    assert main(["print-config", str(WARP_TINY), "trainer.max_steps=11"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.trainer.max_steps == 11 and printed.stage == "warp"


def test_cli_reports_config_errors_in_one_line(capsys):
    assert main(["print-config", str(WARP_TINY), "trainer.max_step=3"]) == 2
    err = capsys.readouterr().err
    assert "error: unknown config key 'trainer.max_step'" in err and "Traceback" not in err


def test_a_defaults_entry_grafts_a_file_under_a_key(tmp_path):
    (tmp_path / "net.yaml").write_text("net:\n  code_dim: 7\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"defaults:\n  - {WARP_TINY}\n  - model.inner: net.yaml\n")
    raw = load_yaml_with_defaults(exp)
    assert raw.model.inner.net.code_dim == 7 and raw.model.net.code_dim == 16  # beside warp_tiny's own model
    exp.write_text("defaults:\n  - {a: net.yaml, b: net.yaml}\n")
    with pytest.raises(ConfigError, match="one 'key: file' pair"):
        load_yaml_with_defaults(exp)


@pytest.mark.parametrize("override, choices", [
    ("data.mode=pair", "pairs, windows, identity_tasks, cross_identity"),
    ("logger.type=mlflow", "wandb, tensorboard, csv, none"),
    ("logger.mode=live", "offline, online, disabled"),
])
def test_an_enum_option_rejects_a_bad_value_naming_the_valid_ones(override, choices):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"config key '{key}'.*{choices}"):
        compose(WARP_TINY, [override])
