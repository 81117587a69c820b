"""The CRD schemas and the Python models cannot drift apart: every schema field is a model
field of the matching type and vice versa, defaults agree, and the CRDs are complete."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest

from fogline.api.codec import encode, field_types, is_optional, json_name, strip_optional
from fogline.api.crds import CRD_FILES, load_crds, openapi_schema
from fogline.api.defaults import apply_defaults
from fogline.api.edgedeployment import EdgeDeploymentSpec, EdgeDeploymentStatus
from fogline.api.modeltraining import ModelTrainingSpec, ModelTrainingStatus

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
MODELS = [
    ("ModelTraining", "spec", ModelTrainingSpec),
    ("ModelTraining", "status", ModelTrainingStatus),
    ("EdgeDeployment", "spec", EdgeDeploymentSpec),
    ("EdgeDeployment", "status", EdgeDeploymentStatus),
]
SCALARS = {"string": str, "integer": int, "number": float, "boolean": bool}


def python_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def check_object(cls: type[Any], schema: dict[str, Any], path: str) -> None:
    fields = {json_name(field): field for field in dataclasses.fields(cls)}
    properties: dict[str, Any] = schema.get("properties", {})
    assert set(fields) - set(properties) == set(), f"{path}: model fields not in the CRD"
    assert set(properties) - set(fields) == set(), f"{path}: CRD fields not in the model"
    required = set(schema.get("required", []))
    hints = field_types(cls)
    for key, field in fields.items():
        prop, hint, where = properties[key], hints[field.name], f"{path}.{key}"
        default = python_default(field)
        if key in required:
            assert not is_optional(hint), f"{where} is required by the CRD, so not Optional"
            assert default is dataclasses.MISSING, f"{where} is required; no Python default"
        elif "default" in prop:
            assert not is_optional(hint), f"{where} always has a value after defaulting"
            assert encode(default) == apply_defaults(prop, prop["default"]), (
                f"{where}: the Python default differs from the CRD default"
            )
        else:
            assert is_optional(hint) or default is not dataclasses.MISSING, (
                f"{where} may be absent, so it needs None or a default"
            )
        check_type(strip_optional(hint), prop, where)


def check_type(hint: Any, prop: dict[str, Any], path: str) -> None:
    if prop.get("x-kubernetes-int-or-string"):
        assert set(get_args(hint)) == {int, str}, f"{path}: int-or-string needs int | str"
        return
    if prop.get("x-kubernetes-preserve-unknown-fields"):
        assert get_origin(hint) in (dict, Mapping), f"{path}: free-form object needs a Mapping"
        assert get_args(hint)[1] is Any, path
        return
    kind = prop["type"]
    if kind == "object" and "properties" in prop:
        assert dataclasses.is_dataclass(hint), f"{path}: an object with fields needs a dataclass"
        check_object(hint, prop, path)  # type: ignore[arg-type]
    elif kind == "object":
        assert get_origin(hint) in (dict, Mapping), f"{path}: a map needs a Mapping"
        check_type(get_args(hint)[1], prop["additionalProperties"], f"{path}[*]")
    elif kind == "array":
        assert get_origin(hint) is tuple, f"{path}: a list is a tuple in the model"
        check_type(get_args(hint)[0], prop["items"], f"{path}[*]")
    elif "enum" in prop:
        assert get_origin(hint) is Literal, f"{path}: an enum needs a Literal"
        assert list(get_args(hint)) == prop["enum"], f"{path}: Literal and enum differ"
    else:
        assert hint is SCALARS[kind], f"{path}: {kind} needs {SCALARS[kind].__name__}"


@pytest.mark.parametrize(
    ("kind", "part", "model"), MODELS, ids=[f"{kind}.{part}" for kind, part, _ in MODELS]
)
def test_model_and_crd_have_the_same_fields_types_and_defaults(
    kind: str, part: str, model: type[Any]
) -> None:
    check_object(model, openapi_schema(kind)["properties"][part], part)


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, prop in schema.get("properties", {}).items():
        yield from walk(prop, f"{path}.{key}")
    for child in ("items", "additionalProperties"):
        if isinstance(schema.get(child), dict):
            yield from walk(schema[child], f"{path}[*]")


def every_node() -> list[tuple[str, dict[str, Any]]]:
    nodes = []
    for kind in CRD_FILES:
        nodes += [(path, node) for path, node in walk(openapi_schema(kind), kind)]
    return nodes


def test_every_field_has_a_description() -> None:
    missing = [
        path
        for path, node in every_node()
        if "description" not in node
        and not path.endswith(".metadata")  # the apiserver forbids describing metadata
        and not path.endswith("[*]")  # map values and list items are described by the parent
    ]
    assert missing == []


def test_lists_maps_and_checked_strings_are_bounded_for_cel_cost() -> None:
    unbounded = [
        path
        for path, node in every_node()
        if (node.get("type") == "array" and "maxItems" not in node)
        or ("additionalProperties" in node and "maxProperties" not in node)
        or (
            node.get("type") == "string"
            and "x-kubernetes-validations" in node
            and "maxLength" not in node
        )
    ]
    assert unbounded == []


def test_cel_rules_carry_a_message() -> None:
    silent = [
        path
        for path, node in every_node()
        for rule in node.get("x-kubernetes-validations", [])
        if not rule.get("message")
    ]
    assert silent == []


def test_conditions_are_a_map_keyed_by_type_and_status_is_a_subresource() -> None:
    for crd in load_crds():
        (version,) = crd["spec"]["versions"]
        assert version["subresources"] == {"status": {}}
        conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
            "conditions"
        ]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert crd["spec"]["names"]["categories"] == ["fogline"]


@pytest.mark.parametrize(
    ("kind", "short", "columns"),
    [
        ("ModelTraining", "mt", ["Phase", "Metric", "Digest", "Attempts", "Age"]),
        ("EdgeDeployment", "ed", ["Model", "Sites", "Phase", "Wave", "Age"]),
    ],
)
def test_short_names_and_printer_columns(kind: str, short: str, columns: list[str]) -> None:
    crd = next(crd for crd in load_crds() if crd["spec"]["names"]["kind"] == kind)
    assert crd["spec"]["names"]["shortNames"] == [short]
    (version,) = crd["spec"]["versions"]
    assert [column["name"] for column in version["additionalPrinterColumns"]] == columns


@pytest.mark.parametrize("file_name", sorted(CRD_FILES.values()))
def test_packaged_crd_is_byte_identical_to_the_canonical_one(file_name: str) -> None:
    canonical = REPO / "crds" / file_name
    packaged = REPO / "operator" / "fogline" / "api" / "crds" / file_name
    assert packaged.read_bytes() == canonical.read_bytes(), "run tools/sync_crds.py"


def test_sync_tool_finds_no_drift_and_every_crd_file_is_known() -> None:
    spec = importlib.util.spec_from_file_location("sync_crds", REPO / "tools" / "sync_crds.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.differing() == []
    assert sorted(path.name for path in (REPO / "crds").glob("*.yaml")) == sorted(
        CRD_FILES.values()
    )
