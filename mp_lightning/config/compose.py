"""Compose an experiment from YAML files and overrides, then validate it before any work starts."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from mp_lightning.errors import ConfigError

DEFAULTS_KEY = "defaults"


def load_yaml_with_defaults(path: str | Path, _chain: tuple = ()) -> DictConfig:
    """Load `path`, first merging the files named in its `defaults:` list (relative to `path`), in order.

    The file's own keys are merged last, so an experiment states only what it changes. An entry
    `KEY: FILE` (e.g. `model.inner: ../base/metaportrait_tiny_model.yaml`) grafts the file under that
    dotted key instead of at the top, so a section (a network) is written once and used in several places.
    """
    path = Path(path)
    if not path.is_file():
        where = f" (named in the defaults list of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"defaults list cycle: {cycle}")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and OmegaConf's own errors
        raise ConfigError(f"cannot parse {path}: {err}") from err
    if node is None:
        node = OmegaConf.create({})
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: an experiment file must be a mapping of keys, got a {type(node).__name__}")
    defaults = node.pop(DEFAULTS_KEY, None) or []
    if not isinstance(defaults, (ListConfig, list)):
        raise ConfigError(f"{path}: '{DEFAULTS_KEY}' must be a list of file paths")
    merged = OmegaConf.create({})
    for entry in defaults:
        key, file = _defaults_entry(entry, path)
        base = load_yaml_with_defaults(path.parent / file, (*_chain, resolved))
        if key:
            grafted = OmegaConf.create({})
            OmegaConf.update(grafted, key, base, force_add=True)
            base = grafted
        merged = OmegaConf.merge(merged, base)
    return OmegaConf.merge(merged, node)


def _defaults_entry(entry, path: Path) -> tuple[str | None, str]:
    """(key to graft under or None, file) of one `defaults:` entry: `FILE` or `KEY: FILE`."""
    if isinstance(entry, (DictConfig, dict)):
        if len(entry) != 1:
            raise ConfigError(f"{path}: a '{DEFAULTS_KEY}' entry is a file or one 'key: file' pair, got {dict(entry)}")
        (key, file), = entry.items()
        return str(key), str(file)
    return None, str(entry)


def parse_overrides(overrides: Iterable[str]) -> DictConfig:
    """`["model.lr=1e-4", "trainer.devices=2"]` (W&B's `${args_no_hyphens}` form) to a config."""
    items = []
    for item in overrides:
        item = item[2:] if item.startswith("--") else item  # tolerate W&B's `${args}` form too
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        items.append(item)
    try:
        return OmegaConf.from_dotlist(items)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides {items}: {err}") from err


def model_overrides_of(overrides: Iterable[str]) -> list[str]:
    """The `model.` keys among `key=value` overrides: what evaluating a checkpoint sets over its saved config."""
    return [item for item in overrides if item.lstrip("-").startswith("model.")]


def _closest(key: str, valid: Sequence[str]) -> str | None:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return match[0] if match else None


def _is_closed(schema_node) -> bool:
    """A structured (dataclass-typed) node accepts only its fields; a plain dict node accepts any key."""
    return isinstance(schema_node, DictConfig) and OmegaConf.get_type(schema_node) not in (dict, None)


def _check_keys(raw: DictConfig, schema: DictConfig, prefix: str = "") -> None:
    schema_keys = set(schema.keys())  # `key in schema` is False for a MISSING field
    for key in raw.keys():
        full = f"{prefix}{key}"
        if key not in schema_keys:
            if not _is_closed(schema):
                continue
            valid = [str(k) for k in schema.keys()]
            close = _closest(str(key), valid)
            hint = f"; did you mean '{prefix}{close}'?" if close else ""
            section = prefix.rstrip(".") or "the top level"
            raise ConfigError(
                f"unknown config key '{full}'{hint} (valid keys in {section}: {', '.join(valid)})"
            )
        raw_child = raw._get_node(key)
        schema_child = schema._get_node(key)
        if isinstance(raw_child, DictConfig) and isinstance(schema_child, DictConfig) and not raw_child._is_none():
            if not schema_child._is_none():
                _check_keys(raw_child, schema_child, f"{full}.")


def build_schema(raw: DictConfig) -> DictConfig:
    """The root schema with the `model`, `data` and `metrics` sections typed for this experiment."""
    from mp_lightning.config.schema import ExperimentConfig
    from mp_lightning.stages import stage_class, stage_names

    stage = raw.get("stage")
    if stage is None or OmegaConf.is_missing(raw, "stage"):
        raise ConfigError(f"the experiment names no 'stage' (one of: {', '.join(stage_names())})")
    if stage not in stage_names():
        close = _closest(str(stage), stage_names())
        hint = f"; did you mean '{close}'?" if close else ""
        raise ConfigError(f"unknown stage '{stage}' in key 'stage'{hint} (valid: {', '.join(stage_names())})")
    schema = OmegaConf.structured(ExperimentConfig)
    cls = stage_class(stage)
    raw_model = raw.get("model") or OmegaConf.create({})
    schema.model = cls.model_schema(raw_model)
    from datamodules.config import DataConfig

    schema.data = OmegaConf.structured(DataConfig)
    from mp_lightning.metrics.suite import MetricsConfig

    schema.metrics = OmegaConf.structured(MetricsConfig)
    return schema


def validate(raw: DictConfig) -> DictConfig:
    schema = build_schema(raw)
    _check_keys(raw, schema)
    try:
        cfg = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"config key '{key}': {msg}") from err
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(f"config key '{err.full_key}' must be set (no default)") from err
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"config key '{key}': {str(err).splitlines()[0]}") from err
    return cfg


def compose(
    experiment: str | Path,
    overrides: Iterable[str] = (),
    overlays: Iterable[str | Path] = (),
) -> DictConfig:
    """Experiment file, then overlay files (debug profiles), then `key=value` overrides; validated."""
    raw = load_yaml_with_defaults(experiment)
    for overlay in overlays:
        raw = OmegaConf.merge(raw, load_yaml_with_defaults(overlay))
    raw = OmegaConf.merge(raw, parse_overrides(overrides))
    return validate(raw)


def split_cli_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate overlay YAML files from `key=value` overrides, as given after the experiment file."""
    overlays, overrides = [], []
    for a in args:
        if "=" not in a and a.endswith((".yaml", ".yml")):
            overlays.append(a)
        else:
            overrides.append(a)
    return overlays, overrides


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
    return path
