"""`fogline status` from sample CR dicts: the summaries, the rendered tables (progress with
ETA, metric, short digests, per-site rollout state, failing condition messages), JSON output
and the one-line errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fogline import status
from fogline.status import (
    as_json,
    deployment_summary,
    duration,
    failing_message,
    render,
    short_digest,
    training_summary,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
DIGEST_A = "sha256:" + "a1" * 32
DIGEST_B = "sha256:" + "b2" * 32


def _meta(name: str, namespace: str = "ml") -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "creationTimestamp": "2026-05-01T11:55:00Z"}


RUNNING_TRAINING = {
    "metadata": _meta("digits-mlp"),
    "spec": {"hyperparameters": {"epochs": 20}},
    "status": {
        "phase": "Running",
        "progress": {
            "epoch": 7,
            "epochs": 20,
            "metric": {"name": "accuracy", "value": 0.9412},
            "eta": "2026-05-01T12:03:10Z",
        },
        "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}],
    },
}
DONE_TRAINING = {
    "metadata": _meta("digits-cnn"),
    "status": {
        "phase": "Succeeded",
        "metrics": {"accuracy": 0.981, "loss": 0.05},
        "artifact": {"digest": DIGEST_A, "metric": {"name": "accuracy", "value": 0.9765}},
    },
}
FAILED_TRAINING = {
    "metadata": _meta("bad-data"),
    "status": {
        "phase": "Failed",
        "conditions": [
            {"type": "Scheduled", "status": "True", "reason": "Scheduled"},
            {
                "type": "Succeeded",
                "status": "False",
                "reason": "DatasetNotFound",
                "message": "dataset /data/x.npz: no such file",
            },
        ],
    },
}
ROLLING_DEPLOYMENT = {
    "metadata": _meta("digits-edge"),
    "status": {
        "phase": "Progressing",
        "currentDigest": DIGEST_A,
        "targetDigest": DIGEST_B,
        "counts": {"sites": 3, "sitesReady": 1},
        "wave": {"index": 1},
        "sites": [
            {
                "name": "site-01",
                "state": "Ready",
                "digest": DIGEST_B,
                "desired": 2,
                "ready": 2,
                "reachable": True,
            },
            {
                "name": "site-02",
                "state": "Updating",
                "digest": DIGEST_A,
                "desired": 2,
                "ready": 1,
                "reachable": True,
                "message": "1 of 2 pods on the new model",
            },
            {
                "name": "site-03",
                "state": "Unreachable",
                "desired": 2,
                "ready": 0,
                "reachable": False,
                "message": "no node heartbeat for 5m",
            },
        ],
    },
}


def _text(renderable: Any) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45, "45s"), (192, "3m12s"), (900, "15m"), (7500, "2h5m"), (273600, "3d4h")],
)
def test_duration_reads_like_kubectl(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_short_digest_is_twelve_hex_characters() -> None:
    assert short_digest(DIGEST_A) == "a1" * 6
    assert short_digest(None) == "-"


def test_failing_message_picks_a_false_condition_or_a_true_negative_one() -> None:
    assert failing_message(FAILED_TRAINING["status"]["conditions"]) == (
        "dataset /data/x.npz: no such file"
    )
    assert failing_message([{"type": "Degraded", "status": "True", "reason": "WaveFailed"}]) == (
        "WaveFailed"
    )
    assert failing_message(RUNNING_TRAINING["status"]["conditions"]) is None
    assert failing_message(None) is None


def test_training_summary_of_a_running_training_has_progress_and_eta() -> None:
    row = training_summary(RUNNING_TRAINING, NOW)
    assert (row["epoch"], row["epochs"], row["etaSeconds"]) == (7, 20, 190)
    assert row["metric"] == {"name": "accuracy", "value": 0.9412}
    assert row["ageSeconds"] == 300 and row["message"] is None


def test_training_summary_prefers_the_gated_artifacts_metric() -> None:
    row = training_summary(DONE_TRAINING, NOW)
    assert row["metric"]["value"] == 0.9765 and row["digest"] == DIGEST_A
    assert row["etaSeconds"] is None


def test_training_summary_of_a_bare_object_shows_pending() -> None:
    row = training_summary({"metadata": {"name": "new"}}, NOW)
    assert row["phase"] == "Pending" and row["metric"] is None and row["ageSeconds"] is None


def test_trainings_table_shows_progress_metric_digest_and_failure() -> None:
    text = _text(render([RUNNING_TRAINING, DONE_TRAINING, FAILED_TRAINING], [], NOW, "", False))
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert "7/20  ETA 3m10s" in lines["digits-mlp"] and "accuracy 0.941" in lines["digits-mlp"]
    assert "a1a1a1a1a1a1" in lines["digits-cnn"] and "accuracy 0.977" in lines["digits-cnn"]
    assert "Failed" in lines["bad-data"] and "no such file" in lines["bad-data"]
    assert "5m0s" in lines["digits-cnn"]
    assert "No EdgeDeployments" in text


@pytest.mark.parametrize(
    ("deployment_status", "ready", "total"),
    [
        ({"counts": {"sites": 3, "sitesReady": 1}}, 1, 3),
        ({"sitesReady": "2/4"}, 2, 4),
        ({"sites": [{"name": "a", "state": "Ready"}, {"name": "b", "state": "Failed"}]}, 1, 2),
        ({}, None, None),
    ],
)
def test_sites_ready_come_from_counts_the_column_or_the_sites(
    deployment_status: dict[str, Any], ready: int | None, total: int | None
) -> None:
    row = deployment_summary({"metadata": _meta("d"), "status": deployment_status}, NOW)
    assert (row["sitesReady"], row["sitesTotal"]) == (ready, total)


def test_deployment_tables_show_the_rollout_and_every_site() -> None:
    text = _text(render([], [ROLLING_DEPLOYMENT], NOW, "in namespace ml", False))
    assert "No ModelTrainings in namespace ml." in text
    deployment = next(line for line in text.splitlines() if "digits-edge" in line and "│" in line)
    assert "a1a1a1a1a1a1 → b2b2b2b2b2b2" in deployment and "1/3" in deployment
    assert "Sites of ml/digits-edge" in text
    sites = {line.split("│")[1].strip(): line for line in text.splitlines() if "site-0" in line}
    assert "Ready" in sites["site-01"] and "2/2" in sites["site-01"] and "yes" in sites["site-01"]
    assert "1/2" in sites["site-02"] and "1 of 2 pods" in sites["site-02"]
    assert "Unreachable" in sites["site-03"] and "no" in sites["site-03"].split("│")[5]


def test_all_namespaces_adds_a_namespace_column() -> None:
    text = _text(render([DONE_TRAINING], [ROLLING_DEPLOYMENT], NOW, "", True))
    assert text.count("NAMESPACE") == 2


def test_json_output_keeps_full_digests_and_sites() -> None:
    document = as_json([DONE_TRAINING], [ROLLING_DEPLOYMENT], NOW)
    assert document["modelTrainings"][0]["digest"] == DIGEST_A
    deployment = document["edgeDeployments"][0]
    assert deployment["targetDigest"] == DIGEST_B and len(deployment["sites"]) == 3
    json.dumps(document)  # plain JSON types only


def test_no_configuration_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status.main(["--kubeconfig", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--kubeconfig" in err


def test_unreachable_cluster_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}
                ],
            }
        )
    )
    assert status.main(["--kubeconfig", str(kubeconfig), "-o", "json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the cluster at http://127.0.0.1:9")
    assert err.count("\n") == 1


def test_bad_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        status.main(["-A", "-n", "x"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_sites_left_out_of_status_are_counted_under_the_sites_table() -> None:
    deployment = {
        **ROLLING_DEPLOYMENT,
        "status": {**ROLLING_DEPLOYMENT["status"], "sitesOmitted": 97},
    }
    row = as_json([], [deployment], NOW)["edgeDeployments"][0]
    assert row["sitesOmitted"] == 97
    assert "97 more sites not listed" in _text(render([], [deployment], NOW, "", False))


ANALYSED_DEPLOYMENT = {
    "metadata": _meta("digits-edge"),
    "status": {
        "phase": "RolledBack",
        "failedSite": "site-02",
        "analysis": {
            "wave": 1,
            "digest": DIGEST_B,
            "phase": "Failed",
            "requests": 240,
            "results": [
                {
                    "metric": "errorRatio",
                    "value": 0.0,
                    "threshold": 0.05,
                    "passed": True,
                    "site": "site-02",
                },
                {
                    "metric": "p99LatencyRatio",
                    "value": 3.4,
                    "threshold": 1.2,
                    "baseline": 1.0,
                    "site": "site-02",
                    "passed": False,
                },
            ],
            "failure": {
                "site": "site-02",
                "metric": "p99LatencyRatio",
                "value": 3.4,
                "threshold": 1.2,
            },
            "message": "site site-02: p99LatencyRatio 3.4 > 1.2",
            "waves": [
                {
                    "wave": 1,
                    "digest": DIGEST_B,
                    "phase": "Failed",
                    "requests": 240,
                    "message": "site site-02: p99LatencyRatio 3.4 > 1.2",
                    "results": [
                        {
                            "metric": "p99LatencyRatio",
                            "value": 3.4,
                            "threshold": 1.2,
                            "site": "site-02",
                            "passed": False,
                        }
                    ],
                },
                {
                    "wave": 0,
                    "digest": DIGEST_B,
                    "phase": "Passed",
                    "requests": 120,
                    "message": "every threshold held on 120 request(s)",
                    "results": [
                        {
                            "metric": "p99LatencyRatio",
                            "value": 1.05,
                            "threshold": 1.2,
                            "site": "site-01",
                            "passed": True,
                        }
                    ],
                },
            ],
        },
    },
}


def test_the_analysis_of_each_wave_shows_with_its_measured_values() -> None:
    text = _text(render([], [ANALYSED_DEPLOYMENT], NOW, "in namespace ml", False))
    assert "Analysis of ml/digits-edge" in text
    assert "p99LatencyRatio 3.4 > 1.2 at site-02" in text
    assert "p99LatencyRatio 1.05 <= 1.2 at site-01" in text
    # The wave that ended heads status.analysis.waves too: it is listed once.
    rows = deployment_summary(ANALYSED_DEPLOYMENT, NOW)["analysis"]
    assert [(r["wave"], r["phase"]) for r in rows] == [(1, "Failed"), (0, "Passed")]
