"""The label and annotation keys that the trainer image, the dev cluster and the operator's
defaults spell are the ones the operator reads: those rooms import no other operator room,
so each side spells the key and this test holds the spellings together."""

from __future__ import annotations

import pytest

from fogline import settings
from fogline.api import labels
from fogline.devcluster import topology
from fogline.workloads.trainer import progress

pytestmark = pytest.mark.unit


def test_trainer_reports_progress_under_the_annotation_the_operator_reads() -> None:
    assert progress.ANNOTATION == labels.PROGRESS_ANNOTATION


@pytest.mark.parametrize(
    "name",
    [
        "GPU_POOL_LABEL",
        "GPU_PRESENT_LABEL",
        "GPU_RESOURCE",
        "EDGE_ROLE_LABEL",
        "INSTANCE_TYPE_LABEL",
        "SITE_LABEL",
    ],
)
def test_dev_cluster_labels_nodes_as_the_operator_selects_them(name: str) -> None:
    assert getattr(topology, name) == getattr(labels, name)


def test_operator_defaults_select_the_labelled_pools() -> None:
    # settings.py imports no other room either; its defaults name the same keys.
    assert settings.DEFAULT_GPU_NODE_SELECTOR == {labels.GPU_POOL_LABEL: "gpu"}
    assert settings.DEFAULT_EDGE_NODE_SELECTOR == {labels.EDGE_ROLE_LABEL: "true"}
