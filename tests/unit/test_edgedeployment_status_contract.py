"""The EdgeDeployment's phase and site states are spelled in three places: the CRD's enums,
the API's status types (api/edgedeployment.py) and the planner's (rollout/, which imports
no other room). Until the planner takes them from the API, this test holds them together,
and holds the planner's site rows to the API's status.sites shape."""

from __future__ import annotations

import dataclasses
from typing import Any, get_args

import pytest

from fogline.api.crds import openapi_schema
from fogline.api.edgedeployment import (
    DeploymentPhase,
    EdgeDeploymentStatus,
    SiteState,
    SiteStatus,
)
from fogline.rollout import Phase
from fogline.rollout import SiteState as PlannedSiteState
from fogline.rollout import SiteStatus as PlannedSite

pytestmark = pytest.mark.unit


def status_schema() -> dict[str, Any]:
    schema: dict[str, Any] = openapi_schema("EdgeDeployment")["properties"]["status"]
    return schema["properties"]


def test_phases_are_the_crds_enum_in_the_api_and_the_planner() -> None:
    enum = status_schema()["phase"]["enum"]
    assert list(get_args(DeploymentPhase)) == enum
    assert list(get_args(Phase)) == enum


def test_site_states_are_the_crds_enum_in_the_api_and_the_planner() -> None:
    enum = status_schema()["sites"]["items"]["properties"]["state"]["enum"]
    assert list(get_args(SiteState)) == enum
    assert list(get_args(PlannedSiteState)) == enum


def test_a_planned_site_row_parses_as_the_apis_site_status() -> None:
    planned = PlannedSite(
        name="hamburg",
        digest="sha256:" + "a" * 64,
        state="Updating",
        desired=3,
        updated=2,
        ready=1,
        reachable=True,
        message="converging",
    )
    row = planned.to_dict()
    parsed = EdgeDeploymentStatus.from_dict({"sites": [row]}).sites
    assert parsed is not None
    assert dataclasses.astuple(parsed[0]) == dataclasses.astuple(planned)
    assert len(dataclasses.fields(SiteStatus)) == len(row)
