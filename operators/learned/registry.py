"""Checkpoints of learned operators and the weights krylon ships, found by name.

A checkpoint is a dict ``{"state_dict", "config", "model"}``: the network's weights, its constructor arguments
(a JSON string) and the registered name of its class (``"dcdm.DCDMNet"``: module of this package and class), so
a checkpoint rebuilds its own network.  It is read with ``torch.load(..., weights_only=True)``: tensors, strings
and plain containers only, never pickled code.

Shipped weights live in the package data folder ``weights/`` and are found with :mod:`importlib.resources`
(so they load from a wheel, a zip or an editable install alike).  Each model there is three files:

* ``<stem>.pt``   -- the checkpoint;
* ``<stem>.json`` -- its record: ``family`` and ``name`` (what :func:`load_pretrained` is asked for), ``file``,
  ``model`` (the registered class), ``config``, ``sha256`` and ``bytes`` of the ``.pt`` file;
* ``<stem>.md``   -- how it was trained (commands, data, machine) and where it works.

A new family ships weights by adding those files and registering its network class with
:func:`register_model`; nothing here changes.

Examples
--------
>>> from krylon.operators.learned import registry
>>> registry.available("dcdm")
['poisson2d', 'poisson3d']
>>> net = registry.load_pretrained("dcdm", "poisson2d")
>>> type(net).__name__, net.config["dim"]
('DCDMNet', 2)
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
from importlib import resources
from pathlib import Path

import torch

__all__ = ["Checkpointed", "register_model", "model_class", "available", "record", "load_pretrained", "load_checkpoint",
           "save_checkpoint", "checkpoint", "atomic_save", "read_torch_file"]

_MODELS: dict[str, type] = {}
_SPEC = re.compile(r"^[a-z_][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")


def register_model(cls: type) -> type:
    """Class decorator: checkpoints may name ``cls`` (as ``"<module>.<Class>"``) and be rebuilt with it.

    The class must take its checkpoint's ``config`` as keyword arguments and keep them in ``self.config``.
    """
    _MODELS[_spec(cls)] = cls
    return cls


def _spec(cls: type) -> str:
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def model_class(spec: str) -> type:
    """The registered class ``spec`` (``"<module>.<Class>"``, a module of :mod:`krylon.operators.learned`)."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise ValueError(f"a model class is named '<module>.<Class>' (e.g. 'dcdm.DCDMNet'), got {spec!r}")
    if spec not in _MODELS:
        try:  # registration happens when the class's module is imported
            importlib.import_module("." + spec.split(".")[0], __package__)
        except ImportError:
            pass
    if spec not in _MODELS:
        raise ValueError(f"unknown model class {spec!r}; registered: {sorted(_MODELS)}")
    return _MODELS[spec]


# ----------------------------------------------------------------------------- shipped weights
def _weights_root():
    """The folder of shipped weights (an importlib.resources Traversable)."""
    return resources.files(__package__).joinpath("weights")


def _records() -> dict:
    out = {}
    root = _weights_root()
    if not root.is_dir():
        return out
    for entry in root.iterdir():
        if not entry.name.endswith(".json"):
            continue
        try:
            rec = json.loads(entry.read_text(encoding="utf-8"))
            key = (rec["family"], rec["name"])
            rec["file"], rec["model"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"shipped weights record {entry.name} is malformed: {exc!r}") from exc
        out[key] = rec
    return out


def available(family: str) -> list[str]:
    """The names of the shipped models of ``family`` (e.g. ``"dcdm"``)."""
    return sorted(name for fam, name in _records() if fam == family)


def record(family: str, name: str) -> dict:
    """The JSON record of shipped model ``name`` of ``family``; ``ValueError`` naming the known ones if none."""
    recs = _records()
    if (family, name) not in recs:
        raise ValueError(f"unknown pretrained {family} model {name!r}; available: {available(family)}")
    return recs[(family, name)]


def load_pretrained(family: str, name: str, *, map_location="cpu") -> torch.nn.Module:
    """The shipped network ``name`` of ``family``, rebuilt from its checkpoint, in eval mode (no download).

    Raises ``ValueError`` for an unknown name (listing the known ones), a file whose checksum or size differs from
    its record (corrupted or truncated) or a checkpoint that does not match its record; ``FileNotFoundError``
    when the record's weights file is not installed.
    """
    rec = record(family, name)
    entry = _weights_root().joinpath(rec["file"])
    where = f"shipped {family} model {name!r} ({rec['file']})"
    if not entry.is_file():
        raise FileNotFoundError(f"the weights of the {where} are not installed with this copy of krylon "
                                f"(package data missing?); reinstall krylon, or train a model and load it by path")
    data = entry.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if ("bytes" in rec and len(data) != rec["bytes"]) or ("sha256" in rec and digest != rec["sha256"]):
        raise ValueError(f"the {where} is corrupted or truncated: {len(data)} bytes, sha256 {digest[:12]}..., "
                         f"its record says {rec.get('bytes')} bytes, sha256 {str(rec.get('sha256'))[:12]}...; "
                         "reinstall krylon")
    net = _build(_read(io.BytesIO(data), where, map_location), where, default=model_class(rec["model"]))
    if _spec(type(net)) != rec["model"] or ("config" in rec and net.config != rec["config"]):
        raise ValueError(f"the {where} does not match its record: checkpoint {_spec(type(net))} {net.config}, "
                         f"record {rec['model']} {rec.get('config')}")
    return net


# ----------------------------------------------------------------------------- checkpoints
def checkpoint(model: torch.nn.Module) -> dict:
    """``{"state_dict", "config", "model"}`` of a network with a ``config`` (what :func:`save_checkpoint` writes).

    ``"model"`` is left out for a class that is not registered (loading it then needs ``default=``).
    """
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{type(model).__name__} has no config dict of constructor arguments to save")
    ckpt = {"state_dict": model.state_dict(), "config": json.dumps(config)}
    if _MODELS.get(_spec(type(model))) is type(model):
        ckpt["model"] = _spec(type(model))
    return ckpt


def save_checkpoint(model: torch.nn.Module, path) -> None:
    """Write ``model``'s checkpoint to ``path`` (loadable with ``weights_only=True``), atomically."""
    atomic_save(checkpoint(model), Path(path))


class Checkpointed:
    """``from_config`` / ``save`` / ``load`` for a registered network whose constructor takes its own ``config``."""

    @classmethod
    def from_config(cls, config: dict):
        """A new (untrained) network from a ``config`` dict (an older version's: upgraded as a checkpoint's is)."""
        return cls(**(cls.upgrade_config(config) if hasattr(cls, "upgrade_config") else config))

    def save(self, path) -> None:
        """Write the checkpoint (state dict + config, atomically) that :meth:`load` reads."""
        save_checkpoint(self, path)

    @classmethod
    def load(cls, path, *, map_location="cpu"):
        """The network saved at ``path`` (``weights_only=True``), in eval mode; ``ValueError`` for another model's file."""
        return load_checkpoint(path, map_location=map_location, expect=cls)


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: an interrupted write never leaves a truncated file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, *, map_location="cpu", default: type | None = None,
                    expect: type | None = None) -> torch.nn.Module:
    """Rebuild the network saved at ``path``, in eval mode.

    ``default``: the class of checkpoints that do not name one (written before they did); ``expect``: the
    class (or base class) the caller needs -- anything else is a ``ValueError`` naming what the file holds.
    ``FileNotFoundError`` if there is no file; ``ValueError`` if it is not a readable checkpoint (corrupted,
    truncated, not a torch file) or its weights do not fit its configuration.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as fh:
        ckpt = _read(fh, str(path), map_location)
    net = _build(ckpt, str(path), default=default)
    if expect is not None and not isinstance(net, expect):
        raise ValueError(f"{path} holds a {_spec(type(net))} checkpoint, not a {expect.__name__}")
    return net


def read_torch_file(fh, where: str, map_location="cpu"):
    """``torch.load(fh, weights_only=True)``, or ``ValueError`` naming ``where`` for a damaged or foreign file."""
    try:
        return torch.load(fh, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise ValueError(f"{where} is not a readable checkpoint (corrupted, truncated or not a torch file): "
                         f"{exc}") from exc


def _read(fh, where: str, map_location) -> dict:
    ckpt = read_torch_file(fh, where, map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{where} is not a krylon checkpoint (expected keys 'state_dict' and 'config')")
    return ckpt


def _build(ckpt: dict, where: str, default: type | None) -> torch.nn.Module:
    config = ckpt["config"]
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError as exc:
            raise ValueError(f"{where}: the configuration is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{where}: the configuration must be a dict of constructor arguments, got {config!r}")
    if "model" in ckpt:
        cls = model_class(ckpt["model"])
    elif default is not None:
        cls = default
    else:
        raise ValueError(f"{where} does not say which network it holds (no 'model' key)")
    if hasattr(cls, "upgrade_config"):  # a class fills in what configs written by an older version lack
        config = cls.upgrade_config(config)
    try:
        net = cls(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {cls.__name__} does not accept the configuration {config}: {exc}") from exc
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{where}: the weights do not match the network configuration {config}: {exc}") from exc
    return net.eval()
