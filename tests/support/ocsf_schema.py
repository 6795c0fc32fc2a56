"""An offline OCSF validator for the tests: the official schema of a version (as shipped by the
PyPI package ``ocsf-json-schema``) turned into JSON Schema and checked with ``jsonschema``, plus
the two rules JSON Schema cannot state: a caption (``type_name``, ``activity_name``, ``type``,
``status``, ``severity``…) must be the one its ``*_id`` enum gives, and ``type_uid`` must be
``class_uid * 100 + activity_id``."""
from __future__ import annotations

import functools
from typing import Any

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema


@functools.cache
def _raw(version: str) -> dict[str, Any]:
    return get_ocsf_schema(version)


@functools.cache
def _validator(version: str, class_uid: int) -> jsonschema.Draft202012Validator:
    embedded = OcsfJsonSchemaEmbedded(_raw(version))
    schema = embedded.get_class_schema(embedded.lookup_class_name_from_uid(class_uid))
    return jsonschema.Draft202012Validator(schema)


def _class(version: str, class_uid: int) -> dict[str, Any]:
    return next(c for c in _raw(version)["classes"].values() if c["uid"] == class_uid)


def _caption_problems(record: dict[str, Any], attributes: dict[str, Any], version: str,
                      path: str) -> list[str]:
    """Every ``<x>_id`` enum with a sibling caption ``<x>`` must agree (99 "Other" excepted)."""
    problems: list[str] = []
    objects = _raw(version)["objects"]
    for name, value in record.items():
        spec = attributes.get(name)
        if spec is None:
            continue
        if name.endswith("_id") and isinstance(value, int) and spec.get("enum"):
            caption_name = spec.get("sibling") or name[:-3]
            caption = record.get(caption_name)
            entry = spec["enum"].get(str(value))
            if caption is not None and entry is not None and value != 99 \
                    and caption != entry["caption"]:
                problems.append(f"{path}{caption_name}={caption!r} but {name}={value} is "
                                f"{entry['caption']!r}")
        if spec.get("type") == "object_t":
            child = objects[spec["object_type"]]["attributes"]
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    problems += _caption_problems(item, child, version, f"{path}{name}.")
    return problems


def ocsf_problems(record: dict[str, Any]) -> list[str]:
    """Everything wrong with ``record`` against the OCSF version it declares (empty: valid)."""
    version = record["metadata"]["version"]
    class_uid = record["class_uid"]
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in _validator(version, class_uid).iter_errors(record)]
    problems += _caption_problems(record, _class(version, class_uid)["attributes"], version, "")
    if record.get("type_uid") != class_uid * 100 + record.get("activity_id", -1):
        problems.append("type_uid is not class_uid * 100 + activity_id")
    type_uid_enum = _class(version, class_uid)["attributes"]["type_uid"].get("enum", {})
    entry = type_uid_enum.get(str(record.get("type_uid")))
    if entry is None:
        problems.append(f"type_uid {record.get('type_uid')} is not in the schema")
    elif record.get("type_name") != entry["caption"]:
        problems.append(f"type_name {record.get('type_name')!r} is not {entry['caption']!r}")
    return problems
