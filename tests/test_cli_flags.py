"""Flags generated from settings dataclasses (`mp_lightning.commands.flags`): each setting is written once, in
its dataclass, and the flags users type map back to it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import pytest

from mp_lightning.choices import Choice
from mp_lightning.cli import build_parser
from mp_lightning.commands.flags import add_dataclass_flags, settings_from_args
from mp_lightning.commands.synth import SynthSettings
from mp_lightning.preprocess.pipeline import Settings as PreprocessSettings
from mp_lightning.runs.personalize import PersonalizationRecipe, PersonalizationSettings

# (command line with only the required arguments, its settings dataclasses)
COMMANDS = {
    "preprocess": (["preprocess", "RAW", "OUT"], [PreprocessSettings]),
    "synth": (["synth", "OUT"], [SynthSettings]),
    "personalize": (["personalize", "--checkpoint", "c.ckpt", "--video", "v.mp4", "--seconds", "1", "--steps", "2"],
                    [PersonalizationRecipe, PersonalizationSettings]),
}


SETTINGS = [(command, settings_cls) for command, (_, classes) in COMMANDS.items() for settings_cls in classes]
SETTINGS_IDS = [f"{command}-{settings_cls.__name__}" for command, settings_cls in SETTINGS]


@pytest.mark.parametrize("command, settings_cls", SETTINGS, ids=SETTINGS_IDS)
def test_defaults_are_the_dataclass_defaults(command, settings_cls):
    argv = COMMANDS[command][0]
    assert settings_from_args(settings_cls, build_parser().parse_args(argv)) == settings_cls()


@pytest.mark.parametrize("command, settings_cls", SETTINGS, ids=SETTINGS_IDS)
def test_every_setting_is_a_flag_with_help(command, settings_cls):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    by_dest = {a.dest: a for a in sub._actions}
    for f in dataclasses.fields(settings_cls):
        assert f.name in by_dest, f"{command}: no flag for {settings_cls.__name__}.{f.name}"
        assert by_dest[f.name].help, f"{command}: flag of {f.name} has no help"


def test_flags_users_type_reach_the_settings():
    """The README's and the issues' spellings, one non-default value per type."""
    parse = build_parser().parse_args
    pre = settings_from_args(PreprocessSettings, parse(["preprocess", "RAW", "OUT", "--size", "128", "--landmarks",
                                                        "mediapipe68", "--max-missing", "0.5", "--smooth-landmarks"]))
    assert (pre.size, pre.landmarks, pre.max_missing, pre.smooth) == (128, "mediapipe68", 0.5, "savgol")
    pre = settings_from_args(PreprocessSettings, parse(["preprocess", "--smooth-landmarks", "one_euro", "RAW", "OUT"]))
    assert pre.smooth == "one_euro"
    synth = settings_from_args(SynthSettings, parse(["synth", "OUT", "--identities", "3", "--personal-details",
                                                     "--layout", "vox-png", "--workers", "0"]))
    assert (synth.identities, synth.personal_details, synth.layout, synth.workers) == (3, True, "vox-png", 0)
    recipe = settings_from_args(PersonalizationRecipe, parse(
        [*COMMANDS["personalize"][0], "--optimizer", "sgd", "--lr", "1e-3", "--batch-size", "2", "--betas", "0.9", "0.99",
         "--warp-lr-multiplier", "0.5"]))
    assert recipe == PersonalizationRecipe(optimizer="sgd", lr=1e-3, batch_size=2, betas=[0.9, 0.99],
                                           warp_lr_multiplier=0.5)
    run = settings_from_args(PersonalizationSettings, parse(
        [*COMMANDS["personalize"][0], "--lpips-pretrained", "false", "--max-eval-frames", "4", "--device", "cpu"]))
    assert run == PersonalizationSettings(lpips_pretrained=False, max_eval_frames=4, device="cpu")


@pytest.mark.parametrize("argv, flag, valid", [
    (["preprocess", "RAW", "OUT", "--landmarks", "dlib"], "--landmarks", "mediapipe68"),
    (["synth", "OUT", "--layout", "png"], "--layout", "vox-png"),
    ([*COMMANDS["personalize"][0], "--optimizer", "lion"], "--optimizer", "radam"),
])
def test_a_bad_choice_is_refused_with_the_valid_ones(argv, flag, valid, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "invalid choice" in err and valid in err


class Colour(Choice):
    red = "red"
    green = "green"


@dataclass
class AllTypes:
    colour: Colour = field(default=Colour.red, metadata={"help": "a Choice"})
    name: Optional[str] = field(default=None, metadata={"help": "optional"})
    folder: Path = field(default=Path("runs"), metadata={"help": "a path"})
    shape: Tuple[int, int] = field(default=(4, 8), metadata={"help": "two ints"})
    pretrained: bool = field(default=True, metadata={"help": "a bool that is on"})
    verbose: bool = field(default=False, metadata={"help": "a switch"})
    hidden: int = field(default=3, metadata={"cli": False})


def _all_types_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="t")
    add_dataclass_flags(parser, AllTypes)
    return parser


def test_round_trip_of_every_type():
    parser = _all_types_parser()
    assert settings_from_args(AllTypes, parser.parse_args([])) == AllTypes()
    given = settings_from_args(AllTypes, parser.parse_args(
        ["--colour", "green", "--name", "x", "--folder", "a/b", "--shape", "2", "3", "--pretrained", "false",
         "--verbose"]))
    assert given == AllTypes(colour=Colour.green, name="x", folder=Path("a/b"), shape=(2, 3), pretrained=False,
                             verbose=True)
    assert type(given.colour) is Colour and isinstance(given.folder, Path)
    assert not any("--hidden" in a.option_strings for a in parser._actions)
    assert "(default red)" in parser.format_help()


@pytest.mark.parametrize("argv, message", [
    (["--colour", "blue"], "invalid choice: 'blue' (choose from"),
    (["--pretrained", "maybe"], "'maybe' is not true or false"),
    (["--shape", "2"], "expected 2 arguments"),
])
def test_bad_values_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        _all_types_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert message in err
    if argv[0] == "--colour":
        assert "red" in err.split("choose from")[1] and "green" in err.split("choose from")[1]


def test_a_field_without_a_flag_type_is_named():
    import argparse

    @dataclass
    class Nested:
        recipe: PersonalizationRecipe = field(default_factory=PersonalizationRecipe)

    with pytest.raises(TypeError, match="Nested.recipe"):
        add_dataclass_flags(argparse.ArgumentParser(), Nested)
