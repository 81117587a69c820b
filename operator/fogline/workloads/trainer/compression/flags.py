"""The trainer's compression and edge-budget flags, and the settings they make. Kept beside
the settings so the command line grows by two calls, not by a screen of options."""

from __future__ import annotations

import argparse

from fogline.workloads.trainer.compression.selection import METHODS, Budget
from fogline.workloads.trainer.compression.settings import CompressionSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "compression and edge budget",
        "Build one candidate per method (float32 always), measure each on the held-out split "
        "(size, accuracy, latency p50 with ONNX Runtime on the CPU) and serve the smallest "
        "that meets the budget; none fails the run with reason BudgetNotMet.",
    )
    group.add_argument(
        "--compress",
        default="",
        metavar="METHODS",
        help=f"comma-separated candidates among {', '.join(METHODS[1:])} (none)",
    )
    group.add_argument(
        "--per-channel", action="store_true", help="int8-static: per-channel weight scales"
    )
    group.add_argument(
        "--calibration-samples",
        type=int,
        default=256,
        help="int8-static: training rows used to calibrate activation ranges (256)",
    )
    group.add_argument(
        "--float16-io",
        action="store_true",
        help="float16: float16 inputs and outputs too (default: they stay float32)",
    )
    group.add_argument(
        "--sharing-bits",
        type=int,
        default=4,
        help="weight-sharing: 2^bits shared values per tensor, 1..8 (4)",
    )
    group.add_argument(
        "--structured-amount",
        type=float,
        default=0.5,
        help="structured-pruning: fraction of hidden neurons/channels removed, 0.05..0.9 (0.5)",
    )
    group.add_argument(
        "--finetune-epochs",
        type=int,
        default=2,
        help="epochs of fine-tuning after weight sharing and structured pruning (2)",
    )
    group.add_argument("--max-size-bytes", type=int, help="largest acceptable served file")
    group.add_argument(
        "--max-latency-ms", type=float, help="highest acceptable latency p50, in milliseconds"
    )
    group.add_argument(
        "--latency-batch-size", type=int, default=1, help="rows per timed inference (1)"
    )
    group.add_argument(
        "--latency-threads", type=int, default=1, help="ONNX Runtime threads when timing (1)"
    )
    group.add_argument(
        "--min-accuracy",
        type=float,
        default=0.0,
        help="the evaluation gate: candidates below it are never chosen (0)",
    )


def settings_from(args: argparse.Namespace) -> CompressionSettings:
    methods = tuple(part.strip() for part in args.compress.split(",") if part.strip())
    return CompressionSettings(
        methods=methods,
        per_channel=args.per_channel,
        calibration_samples=args.calibration_samples,
        float16_io=args.float16_io,
        sharing_bits=args.sharing_bits,
        structured_amount=args.structured_amount,
        finetune_epochs=args.finetune_epochs,
        budget=Budget(
            max_size_bytes=args.max_size_bytes,
            max_latency_ms=args.max_latency_ms,
            batch_size=args.latency_batch_size,
            threads=args.latency_threads,
            min_accuracy=args.min_accuracy,
        ),
    )
