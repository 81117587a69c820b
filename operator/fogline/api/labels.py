"""Label syntax (qualified keys and values) and the labels and annotations that Fogline reads
but others write: on nodes at the edge and in the GPU pool, and the trainer's progress on
its pod. This is their one home in the operator; the labels Fogline stamps on the objects
it builds live beside their builder (`edge/daemonsets.py`, `training/jobs.py`). The trainer
image and the dev cluster spell their side of the same keys themselves (they import no
operator room); tests/unit/test_label_contract.py holds the two sides together. Checks
only; nothing here talks to the API."""

from __future__ import annotations

import re

from fogline.api.errors import SpecError

SITE_LABEL = "topology.fogline.io/site"
EDGE_ROLE_LABEL = "node-role.kubernetes.io/edge"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
K3S_INSTANCE_TYPE = "k3s"
MAINTENANCE_LABEL = "fogline.io/maintenance"
UPDATE_LOCK_ANNOTATION = "fogline.io/update-lock"
PROGRESS_ANNOTATION = "fogline.io/progress"
GPU_POOL_LABEL = "fogline.io/pool"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
GPU_RESOURCE = "nvidia.com/gpu"

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a valid label key, or None when it is."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"the prefix {prefix!r} must be a DNS subdomain of at most 253 characters"
    if not name or len(name) > 63 or not _NAME.match(name):
        return (
            f"the name {name!r} must be 1 to 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None when it is."""
    if value == "":
        return None
    if len(value) > 63 or not _NAME.match(value):
        return (
            f"the value {value!r} must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def selector_errors(path: str, key: str, value: str) -> list[SpecError]:
    """Label syntax problems of one nodeSelector entry at `path`."""
    errors = []
    key_problem = label_key_problem(key)
    if key_problem:
        errors.append(SpecError(f"{path}[{key}]", f"{key_problem}; fix the label key"))
    value_problem = label_value_problem(value)
    if value_problem:
        errors.append(SpecError(f"{path}[{key}]", f"{value_problem}; fix the label value"))
    return errors
