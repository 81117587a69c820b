"""What the operator's settings allow an EdgeDeployment to ask of edge nodes."""

from __future__ import annotations

import pytest

from fogline.api.edgedeployment import EdgeDeploymentSpec
from fogline.edge.admission import (
    admission_problems,
    allowed_image_prefixes,
    image_allowed,
    image_repository,
    node_path,
)
from fogline.settings import OperatorSettings, SettingsError

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "a" * 64


def spec(uri: str | None = None, image: str | None = None) -> EdgeDeploymentSpec:
    model = {"uri": uri, "digest": DIGEST} if uri else {"fromTraining": "digits"}
    runtime = {"image": image} if image else {}
    return EdgeDeploymentSpec.from_dict({"model": model, "runtime": runtime})


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("ghcr.io/fogline/server:0.1.0", "ghcr.io/fogline/server"),
        ("localhost:5000/fogline/server", "localhost:5000/fogline/server"),
        ("localhost:5000/server:1@sha256:" + "b" * 64, "localhost:5000/server"),
        ("server", "server"),
    ],
)
def test_image_repository_drops_tag_and_digest(image: str, repository: str) -> None:
    assert image_repository(image) == repository


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("ghcr.io/fogline/server:0.2.0", True),
        ("ghcr.io/fogline/server@sha256:" + "c" * 64, True),
        ("ghcr.io/fogline/server", True),
        ("ghcr.io/fogline/server-evil:1", False),
        ("ghcr.io/fogline/serverx", False),
        ("docker.io/library/busybox:1", False),
        ("ghcr.io/fogline/trainer:0.1.0", False),
    ],
)
def test_default_prefix_is_the_server_repository_at_a_boundary(image: str, allowed: bool) -> None:
    prefixes = allowed_image_prefixes(OperatorSettings())
    assert prefixes == ("ghcr.io/fogline/server",)
    assert image_allowed(image, prefixes) is allowed


def test_prefix_ending_in_a_slash_allows_a_whole_registry_path() -> None:
    assert image_allowed("registry.corp/edge/anything:1", ("registry.corp/edge/",))
    assert not image_allowed("registry.corp/edgeX/anything:1", ("registry.corp/edge/",))


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("file:///srv/models/digits", "/srv/models/digits"),
        ("file:///srv/models/../../etc", "/etc"),
        ("/srv/models//digits/", "/srv/models/digits"),
        ("pvc://claim/digits", None),
        ("https://models.example/digits", None),
    ],
)
def test_node_path_is_normalised(uri: str, path: str | None) -> None:
    assert node_path(uri) == path


def test_file_artifacts_are_refused_by_default_naming_the_setting() -> None:
    [problem] = admission_problems(spec("file:///etc"), "file:///etc", OperatorSettings())
    assert problem.field == "spec.model.uri"
    assert "allowedFileRoots: none" in str(problem)


@pytest.mark.parametrize(
    ("uri", "refused"),
    [
        ("file:///srv/models/digits", False),
        ("file:///srv/models", False),
        ("file:///srv/models/../secrets", True),
        ("file:///srv/modelsX/digits", True),
        ("/etc/shadow", True),
        ("pvc://claim/digits", False),
    ],
)
def test_file_artifacts_inside_allowed_roots_only(uri: str, refused: bool) -> None:
    settings = OperatorSettings(allowed_file_roots=("/srv/models/",))
    assert bool(admission_problems(spec(uri), uri, settings)) is refused


def test_a_training_artifact_on_a_node_folder_is_judged_too() -> None:
    uri = "file:///var/lib/fogline/artifacts/digits/r1"
    [problem] = admission_problems(spec(), uri, OperatorSettings())
    assert problem.field == "spec.model.fromTraining"


def test_image_outside_the_prefixes_is_refused_naming_the_setting() -> None:
    [problem] = admission_problems(spec(image="evil.example/x:1"), None, OperatorSettings())
    assert problem.field == "spec.runtime.image"
    assert "allowedImagePrefixes" in str(problem)
    settings = OperatorSettings(allowed_image_prefixes=("evil.example/",))
    assert admission_problems(spec(image="evil.example/x:1"), None, settings) == []


def test_settings_parse_the_allowances_from_the_environment() -> None:
    settings = OperatorSettings.from_env(
        {
            "FOGLINE_ALLOWED_FILE_ROOTS": '["/srv/models"]',
            "FOGLINE_ALLOWED_IMAGE_PREFIXES": '["registry.corp/edge/"]',
        }
    )
    assert settings.allowed_file_roots == ("/srv/models",)
    assert settings.allowed_image_prefixes == ("registry.corp/edge/",)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FOGLINE_ALLOWED_FILE_ROOTS", '["srv/models"]'),
        ("FOGLINE_ALLOWED_FILE_ROOTS", '["/srv/../etc"]'),
        ("FOGLINE_ALLOWED_IMAGE_PREFIXES", '[""]'),
        ("FOGLINE_ALLOWED_IMAGE_PREFIXES", "[1]"),
        ("FOGLINE_REQUIRE_MODEL_SIGNATURE", "yes"),
    ],
)
def test_bad_allowances_are_refused_at_start(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        OperatorSettings.from_env({name: value})


def test_required_signature_refuses_an_edge_deployment_without_a_signer() -> None:
    settings = OperatorSettings.from_env({"FOGLINE_REQUIRE_MODEL_SIGNATURE": "true"})
    assert settings.require_model_signature
    [problem] = admission_problems(spec(), None, settings)
    assert problem.field == "spec.model.signature"
    assert "requireModelSignature" in str(problem)
    signed = EdgeDeploymentSpec.from_dict(
        {"model": {"fromTraining": "digits", "signature": {"publicKeyConfigMap": "signer"}}}
    )
    assert admission_problems(signed, None, settings) == []
    assert admission_problems(spec(), None, OperatorSettings()) == []
