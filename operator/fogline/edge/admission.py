"""What an EdgeDeployment may ask of the edge nodes, bounded by the administrator's
settings: which node folders a file:// artifact may come from, which images the fetch
step and the server may run, and whether artifacts must be signed. Pure: a spec, a resolved model URI and the settings in,
refusals out; the controller turns them into a condition and an Event."""

from __future__ import annotations

import posixpath

from fogline.api.edgedeployment import EdgeDeploymentSpec
from fogline.api.errors import SpecError
from fogline.settings import OperatorSettings


def image_repository(image: str) -> str:
    """`registry/path/name` of an image reference, without its tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def allowed_image_prefixes(settings: OperatorSettings) -> tuple[str, ...]:
    """The administrator's list, or else the repository of the operator's own server image."""
    return settings.allowed_image_prefixes or (image_repository(settings.server_image),)


def image_allowed(image: str, prefixes: tuple[str, ...]) -> bool:
    """A prefix matches at a boundary: `ghcr.io/fogline/server` allows
    `ghcr.io/fogline/server:1.2` and `...server@sha256:...`, never `...server-evil`."""
    for prefix in prefixes:
        if prefix.endswith(("/", ":", "@")) and image.startswith(prefix):
            return True
        if image == prefix or (image.startswith(prefix) and image[len(prefix)] in "/:@"):
            return True
    return False


def node_path(uri: str) -> str | None:
    """The node folder a file:// (or bare absolute path) artifact is read from, normalised;
    None for artifacts that come over the network or from a claim."""
    if uri.startswith("file://"):
        path = uri.removeprefix("file://")
    elif uri.startswith("/"):
        path = uri
    else:
        return None
    return posixpath.normpath("/" + path.lstrip("/"))


def path_allowed(path: str, roots: tuple[str, ...]) -> bool:
    for allowed in roots:
        root = posixpath.normpath(allowed)
        if root in ("/", path) or path.startswith(root + "/"):
            return True
    return False


def admission_problems(
    spec: EdgeDeploymentSpec, model_uri: str | None, settings: OperatorSettings
) -> list[SpecError]:
    """Refusals for what the settings do not allow; empty means the rollout may proceed.
    `model_uri` is the artifact the spec resolves to (its own uri, or the training's)."""
    problems: list[SpecError] = []
    image = spec.runtime.image
    if image:
        prefixes = allowed_image_prefixes(settings)
        if not image_allowed(image, prefixes):
            problems.append(
                SpecError(
                    "spec.runtime.image",
                    f"image {image!r} is outside the images this operator may run on edge "
                    f"nodes ({', '.join(prefixes)}); use one of them, or ask the administrator "
                    "to add its repository to the operator setting allowedImagePrefixes",
                )
            )
    path = node_path(model_uri) if model_uri else None
    if path is not None and not path_allowed(path, settings.allowed_file_roots):
        field = "spec.model.uri" if spec.model.uri else "spec.model.fromTraining"
        roots = ", ".join(settings.allowed_file_roots) or "none"
        problems.append(
            SpecError(
                field,
                f"artifact {model_uri!r} would be read from the node folder {path}, outside the "
                f"folders edge pods may read (allowedFileRoots: {roots}); serve it from s3://, "
                "oci://, https:// or a pvc://, or ask the administrator to add its folder to "
                "the operator setting allowedFileRoots",
            )
        )
    if settings.require_model_signature and spec.model.signature is None:
        problems.append(
            SpecError(
                "spec.model.signature",
                "this operator serves only signed artifacts (operator setting "
                "requireModelSignature): name the ConfigMap holding the signer's public key in "
                "spec.model.signature.publicKeyConfigMap",
            )
        )
    return problems
