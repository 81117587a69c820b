"""Choosing the served compression candidate: the smallest that meets the edge budget and the
gate, never one slower than float32 unless a latency budget allows it, and a failure that
names the closest candidate and what it missed. Pure: measured numbers in, verdicts out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fogline.workloads.trainer.compression.selection import (
    FLOAT16,
    FLOAT32,
    INT8_DYNAMIC,
    INT8_STATIC,
    WEIGHT_SHARING,
    Budget,
    Candidate,
    select,
)
from fogline.workloads.trainer.compression.settings import CompressionSettings
from fogline.workloads.trainer.config import TrainingConfig, validate
from fogline.workloads.trainer.errors import TrainerError

pytestmark = pytest.mark.unit

# The CNN on digits as measured with onnxruntime at batch 64, one thread.
TABLE = [
    Candidate(FLOAT32, "model.onnx", 290_166, 0.9694, 0.370),
    Candidate(INT8_DYNAMIC, "model.int8.onnx", 78_519, 0.9694, 11.2),
    Candidate(INT8_STATIC, "model.int8-static.onnx", 80_047, 0.9721, 0.305),
    Candidate(FLOAT16, "model.fp16.onnx", 146_731, 0.9694, 0.373),
    Candidate(WEIGHT_SHARING, "model.shared.onnx", 45_469, 0.9610, 0.364),
]


def test_smallest_candidate_within_budget_and_gate_is_chosen() -> None:
    selection = select(TABLE, Budget(batch_size=64, min_accuracy=0.95))
    assert selection.chosen is not None and selection.chosen.method == WEIGHT_SHARING
    rows = {row["method"]: row for row in selection.to_dict()["candidates"]}
    assert [m for m, row in rows.items() if row["chosen"]] == [WEIGHT_SHARING]
    assert rows[FLOAT16]["reason"] == "fits, but weight-sharing was chosen"


def test_a_budget_only_one_candidate_meets_picks_that_one() -> None:
    # Only int8-static reaches 0.97, and it fits in 100 kB.
    selection = select(TABLE, Budget(max_size_bytes=100_000, min_accuracy=0.97))
    assert selection.chosen is not None and selection.chosen.method == INT8_STATIC
    fitting = [v.candidate.method for v in selection.verdicts if v.fits]
    assert fitting == [INT8_STATIC]


def test_without_a_latency_budget_a_candidate_slower_than_float_is_never_chosen() -> None:
    table = [TABLE[0], TABLE[1]]  # float32 and the slow dynamic INT8
    selection = select(table, Budget(batch_size=64))
    assert selection.chosen is not None and selection.chosen.method == FLOAT32
    slow = next(v for v in selection.verdicts if v.candidate.method == INT8_DYNAMIC)
    assert "slower than float32" in slow.reason and "no maxLatencyMs" in slow.reason


def test_a_latency_budget_that_allows_the_slower_candidate_lets_it_be_chosen() -> None:
    table = [TABLE[0], TABLE[1]]
    selection = select(table, Budget(max_latency_ms=20.0, batch_size=64))
    assert selection.chosen is not None and selection.chosen.method == INT8_DYNAMIC


def test_latency_within_the_noise_tolerance_of_float_is_not_slower() -> None:
    table = [TABLE[0], Candidate(WEIGHT_SHARING, "model.shared.onnx", 40_000, 0.96, 0.370 * 1.05)]
    selection = select(table, Budget())
    assert selection.chosen is not None and selection.chosen.method == WEIGHT_SHARING


def test_a_gap_of_microseconds_is_not_slower_however_large_its_ratio() -> None:
    # The MLP at batch 8: float32 13 us, weight sharing 19 us (46% slower, 6 us apart).
    tiny = [
        Candidate(FLOAT32, "model.onnx", 106_433, 0.95, 0.013),
        Candidate(WEIGHT_SHARING, "model.shared.onnx", 19_000, 0.94, 0.019),
    ]
    selection = select(tiny, Budget(batch_size=8))
    assert selection.chosen is not None and selection.chosen.method == WEIGHT_SHARING
    # Past the margin the ratio decides again.
    slow = [tiny[0], Candidate(WEIGHT_SHARING, "model.shared.onnx", 19_000, 0.94, 0.070)]
    chosen = select(slow, Budget(batch_size=8)).chosen
    assert chosen is not None and chosen.method == FLOAT32


def test_impossible_budget_chooses_nothing_and_names_the_closest_candidate() -> None:
    selection = select(TABLE, Budget(max_size_bytes=40_000, batch_size=64, min_accuracy=0.99))
    assert selection.chosen is None
    closest = selection.closest()
    assert closest is not None and closest.candidate.method == WEIGHT_SHARING
    message = selection.failure_message()
    assert message.startswith(
        "no candidate meets the edge budget and the evaluation gate; the closest is "
        "weight-sharing: size 45,469 B exceeds maxSizeBytes 40,000; accuracy 0.9610 is below "
        "the threshold 0.99"
    )
    assert "spec.export.budget" in message
    assert all(not row["chosen"] for row in selection.to_dict()["candidates"])


def test_latency_miss_names_the_batch_size_and_the_limit() -> None:
    selection = select([TABLE[0]], Budget(max_latency_ms=0.1, batch_size=64))
    assert selection.chosen is None
    assert selection.failure_message().endswith(
        "the closest is float32: latency p50 0.370 ms at batch 64 exceeds maxLatencyMs 0.1. "
        "Raise spec.export.budget or lower spec.evaluation.threshold, or add methods"
    )


def test_ties_in_size_go_to_the_faster_candidate() -> None:
    table = [
        TABLE[0],
        Candidate(INT8_STATIC, "a.onnx", 1000, 0.9, 0.30),
        Candidate(FLOAT16, "b.onnx", 1000, 0.9, 0.20),
    ]
    selection = select(table, Budget())
    assert selection.chosen is not None and selection.chosen.method == FLOAT16


def test_a_preferred_method_is_served_whatever_it_measures() -> None:
    selection = select([TABLE[0], TABLE[1]], Budget(batch_size=64), prefer=INT8_DYNAMIC)
    assert selection.chosen is not None and selection.chosen.method == INT8_DYNAMIC
    assert selection.to_dict()["chosen"] == INT8_DYNAMIC


def test_the_table_is_strict_json_in_method_order() -> None:
    table = list(reversed(TABLE))
    document = select(table, Budget(max_size_bytes=10**6, max_latency_ms=50, batch_size=64))
    text = json.dumps(document.to_dict(), allow_nan=False)
    methods = [row["method"] for row in json.loads(text)["candidates"]]
    assert methods == [FLOAT32, INT8_DYNAMIC, INT8_STATIC, FLOAT16, WEIGHT_SHARING]
    assert json.loads(text)["budget"] == {
        "batchSize": 64,
        "threads": 1,
        "maxSizeBytes": 1_000_000,
        "maxLatencyMs": 50,
        "minAccuracy": 0.0,
    }


def test_float32_is_always_a_candidate_and_first() -> None:
    settings = CompressionSettings(methods=("weight-sharing", "int8-static"))
    assert settings.candidates() == (FLOAT32, INT8_STATIC, WEIGHT_SHARING)


def _config(**changes: object) -> TrainingConfig:
    base = TrainingConfig(model="cnn", dataset="builtin:digits", output=Path("out"))
    return TrainingConfig(**{**base.__dict__, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"compression": CompressionSettings(methods=("int4",))},
            "--compress: unknown method 'int4'",
        ),
        (
            {"compression": CompressionSettings(methods=("float16",)), "quantize": "int8"},
            "--quantize int8 serves",
        ),
        (
            {
                "compression": CompressionSettings(methods=("float16",)),
                "export_formats": ("torchscript",),
            },
            "add onnx to --export",
        ),
        (
            {"model": "m:f", "compression": CompressionSettings(methods=("structured-pruning",))},
            "built-in mlp and cnn only",
        ),
        (
            {"compression": CompressionSettings(methods=("float16",), sharing_bits=9)},
            "--sharing-bits: 9 is outside 1..8",
        ),
        (
            {"compression": CompressionSettings(budget=Budget(max_size_bytes=1000))},
            "name them with --compress",
        ),
        (
            {
                "compression": CompressionSettings(
                    methods=("float16",), budget=Budget(max_latency_ms=0)
                )
            },
            "--max-latency-ms: 0 must be above 0",
        ),
    ],
)
def test_bad_compression_settings_are_refused_naming_the_flag(
    changes: dict[str, object], expected: str
) -> None:
    with pytest.raises(TrainerError) as refused:
        validate(_config(**changes))
    assert refused.value.reason == "InvalidArgument"
    assert expected in refused.value.message
