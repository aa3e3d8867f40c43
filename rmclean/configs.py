"""Config dataclasses as plain records, and the field metadata the CLI builds its options from.

Every setting is a dataclass field whose ``metadata`` documents it (TRL's style), so the help a
user reads, the flag that sets it and the record that saves it come from one place:

========== ==========================================================================
help       what the setting means and its unit (the CLI appends the default)
flag       the option's name where it is not ``--`` + the field name with ``-`` for ``_``
metavar    as in argparse; ``choices`` too (any iterable of the allowed values)
group      the ``--help`` section the option is listed under, where it is not the config's
parse      ``str -> value`` for settings that are not a plain int, float, str or bool
           (comma lists, pairs of numbers, ``none``); applied after argparse, so a bad
           value is the command's error (status 1), not a usage error
action     ``"append"`` for a repeatable option (a tuple field)
record     the key in the flat record where it differs from the field name
flatten    on a nested config field: its fields sit beside the container's own, in the
           record and on the command line (a container field of the same name wins)
========== ==========================================================================

Records are what ``summary.json``, ``metrics.json``, ``reward_model.json`` and experiment
configs hold: :func:`to_record` writes them, :func:`from_record` reads them back.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from typing import Any


def option_fields(cls: type) -> Iterator[tuple[type, dataclasses.Field, Any]]:
    """``(owner class, field, type hint)`` of every setting of the config class ``cls``, the
    fields of ``flatten`` sub-configs in place of the sub-config."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.metadata.get("flatten"):
            yield from option_fields(hints[field.name])
        else:
            yield cls, field, hints[field.name]


def record_name(field: dataclasses.Field) -> str:
    return field.metadata.get("record", field.name)


def to_record(config: Any) -> dict[str, Any]:
    """The flat record of a config instance, JSON-ready: its own fields, those of ``flatten``
    sub-configs beside them, other configs nested as records, dicts of configs as dicts of
    records, tuples as lists."""
    record: dict[str, Any] = {}
    own = {f.name for f in dataclasses.fields(config)}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.metadata.get("flatten"):
            record.update({k: v for k, v in to_record(value).items() if k not in own})
        else:
            record[record_name(field)] = _plain(value)
    return record


def _plain(value: Any) -> Any:
    """JSON-ready: configs as records, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_record(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def from_record(cls: type, values: Mapping[str, Any], **given: Any):
    """An instance of ``cls`` from a flat record (as :func:`to_record` writes it); ``given``
    sets fields directly (a ready sub-config, say). Unknown keys are an error that lists the
    known ones."""
    values = dict(values)
    by_name = {record_name(f): f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    arguments = dict(given)
    for name, field in by_name.items():
        if field.metadata.get("flatten") and field.name not in given:
            inner = {f.name for _, f, _ in option_fields(hints[field.name])} - set(by_name)
            arguments[field.name] = from_record(hints[field.name], {k: values.pop(k) for k in list(values) if k in inner})
        elif name in values:
            arguments[field.name] = values.pop(name)
    if values:
        known = sorted({record_name(f) for _, f, _ in option_fields(cls)})
        raise ValueError(f"unknown {cls.__name__} setting(s) {sorted(values)}; known: {known}")
    return cls(**arguments)


__all__ = ["from_record", "option_fields", "record_name", "to_record"]
