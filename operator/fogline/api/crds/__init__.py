"""The CustomResourceDefinitions as package data, so the operator and tests read the same
YAML that users apply. The top-level crds/ folder is canonical; tools/sync_crds.py copies it."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

GROUP = "fogline.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Kind -> file name of its CRD, in the order they should be applied.
CRD_FILES: dict[str, str] = {
    "ModelTraining": "modeltrainings.fogline.io.yaml",
    "EdgeDeployment": "edgedeployments.fogline.io.yaml",
}


@functools.cache
def _load(file_name: str) -> dict[str, Any]:
    # PyYAML is the operator's package: imported here, not at the top, so that the edge
    # images can import the API's pure helpers (fogline.api.digests) without it.
    import yaml

    text = resources.files(__name__).joinpath(file_name).read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError(f"{file_name}: expected one CustomResourceDefinition document")
    return document


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def load_crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of `kind` (ModelTraining or EdgeDeployment), a fresh copy."""
    try:
        file_name = CRD_FILES[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(CRD_FILES)}") from None
    crd: dict[str, Any] = _copy(_load(file_name))
    return crd


def load_crds() -> list[dict[str, Any]]:
    """Every CustomResourceDefinition of the project, ready to apply."""
    return [load_crd(kind) for kind in CRD_FILES]


def openapi_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the served version of `kind`, a fresh copy."""
    for version in load_crd(kind)["spec"]["versions"]:
        if version["name"] == VERSION:
            schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
            return schema
    raise ValueError(f"the {kind} CRD does not serve {VERSION}")
