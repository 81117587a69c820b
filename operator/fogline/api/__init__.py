"""Typed views of the fogline.io/v1alpha1 custom resources: parsing with the CRD's defaults,
checks the CRD cannot make, status models and conditions. No I/O beyond reading the CRDs."""

from fogline.api.conditions import Condition, find_condition, set_condition
from fogline.api.crds import API_VERSION, GROUP, VERSION, load_crd, load_crds, openapi_schema
from fogline.api.edgedeployment import (
    EdgeDeployment,
    EdgeDeploymentSpec,
    EdgeDeploymentStatus,
    parse_edgedeployment,
    validate_edgedeployment,
)
from fogline.api.errors import SpecError
from fogline.api.modeltraining import (
    ModelTraining,
    ModelTrainingSpec,
    ModelTrainingStatus,
    parse_modeltraining,
    validate_modeltraining,
)
from fogline.api.timestamps import parse_time, rfc3339

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "EdgeDeployment",
    "EdgeDeploymentSpec",
    "EdgeDeploymentStatus",
    "ModelTraining",
    "ModelTrainingSpec",
    "ModelTrainingStatus",
    "SpecError",
    "find_condition",
    "load_crd",
    "load_crds",
    "openapi_schema",
    "parse_edgedeployment",
    "parse_modeltraining",
    "parse_time",
    "rfc3339",
    "set_condition",
    "validate_edgedeployment",
    "validate_modeltraining",
]
