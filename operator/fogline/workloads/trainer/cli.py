"""The trainer's command line (`python -m fogline.workloads.trainer`, `fogline train`):
flags to a TrainingConfig, exit codes, the `error: ...` line and the termination message.
Torch is imported only after the input has been checked, so bad input fails in a second."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from fogline.workloads.trainer import config as cfg
from fogline.workloads.trainer import publish, termination
from fogline.workloads.trainer.compression import flags as compression_flags
from fogline.workloads.trainer.distillation import settings as distillation_flags
from fogline.workloads.trainer.errors import (
    EXIT_RUNTIME_FAILURE,
    Interrupted,
    TrainerError,
    interrupted,
    invalid_argument,
    storage_error,
)

log = logging.getLogger("fogline.workloads.trainer")

DESCRIPTION = """\
Train a model, export it to ONNX (optionally TorchScript, pruned, INT8-quantized), evaluate
it on a held-out split and write an artifact folder (manifest.json + model files) to
--output. A JSON summary goes to the termination log for the operator to read.
Under torchrun every process trains; only rank 0 writes files."""

EPILOG = """\
environment:
  FOGLINE_TERMINATION_LOG    termination message path (default /dev/termination-log)
  FOGLINE_PVC_ROOT           where pvc://<claim>/<path> datasets are mounted (default /mnt/pvc)
  POD_NAME, POD_NAMESPACE    the pod whose fogline.io/progress annotation shows progress
  FOGLINE_PROGRESS_INTERVAL  seconds between progress patches (default 5)
  RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT   set by torchrun
exit codes: 0 success, 1 runtime failure (a retry may help), 2 bad input or a run that
  cannot succeed as configured (diverged, output not writable or full), 143 SIGTERM"""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so that every bad input
    ends as one `error:` line and a Failed termination message."""

    def error(self, message: str) -> NoReturn:
        raise invalid_argument(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fogline train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model and data")
    model.add_argument(
        "--model",
        required=True,
        help="mlp, cnn, or module:function returning a torch.nn.Module "
        "(called with the keywords it accepts among in_features, num_classes, hidden_units)",
    )
    model.add_argument(
        "--hidden-units", type=int, default=128, help="width of the built-in models (128)"
    )
    model.add_argument(
        "--dataset",
        required=True,
        help="builtin:digits, a local .npz/.csv path, file://, pvc://<claim>/<path> or "
        "http(s)://... (NPZ: arrays x and y; CSV: numbers, label in the last column)",
    )
    model.add_argument("--dataset-digest", help="sha256:<hex>; required for http(s) datasets")
    model.add_argument(
        "--dataset-format", choices=cfg.DATASET_FORMATS, default="auto", help="(auto: by name)"
    )
    model.add_argument(
        "--validation-split",
        type=float,
        default=0.2,
        help="fraction held out for evaluation, 0.05..0.5 (0.2)",
    )
    model.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="train on this seeded, class-stratified share of the training rows, >0..1 (1); "
        "the held-out rows stay the same, for learning curves and data-limited students",
    )
    hyper = parser.add_argument_group("hyperparameters")
    hyper.add_argument("--epochs", type=int, default=10, help="1..10000 (10)")
    hyper.add_argument("--batch-size", type=int, default=64, help="per process, 1..65536 (64)")
    hyper.add_argument("--lr", type=float, default=0.001, help="learning rate, >0..10 (0.001)")
    hyper.add_argument("--optimizer", choices=cfg.OPTIMIZERS, default="adam", help="(adam)")
    hyper.add_argument("--seed", type=int, default=0, help="seeds the split, weights, batches (0)")
    out = parser.add_argument_group("export and output")
    out.add_argument(
        "--export",
        default="onnx",
        help="comma-separated formats: onnx, torchscript (onnx)",
    )
    out.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..21 (17)")
    out.add_argument("--quantize", choices=cfg.QUANTIZATIONS, default="none", help="(none)")
    out.add_argument(
        "--prune",
        type=float,
        default=0.0,
        metavar="AMOUNT",
        help="zero this fraction of weights by magnitude before export, 0..0.9 (0)",
    )
    out.add_argument("--output", required=True, help="artifact folder; also holds checkpoints")
    out.add_argument(
        "--artifact-uri", help="URI reported for the artifact (default: the --output folder)"
    )
    out.add_argument("--name", help="model name in the manifest (default: from --model)")
    out.add_argument(
        "--signing-key",
        help="PEM elliptic-curve private key: sign the artifact (OpenSSF model-signing, model.sig)",
    )
    out.add_argument(
        "--encryption-key",
        help="file of a 32-byte AES-256 key: write the model files encrypted (AES-256-GCM)",
    )
    out.add_argument(
        "--termination-log",
        help="where the JSON summary goes (default: $FOGLINE_TERMINATION_LOG or "
        "/dev/termination-log; only the default is skipped when not writable)",
    )
    compression_flags.add_arguments(parser)
    distillation_flags.add_arguments(parser)
    run = parser.add_argument_group("execution")
    run.add_argument("--device", choices=cfg.DEVICES, default="auto", help="(auto: CUDA if any)")
    run.add_argument(
        "--no-mixed-precision",
        action="store_true",
        help="train in float32 on CUDA too (default: float16 autocast with GradScaler)",
    )
    run.add_argument("--threads", type=int, help="torch CPU threads per process")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def parse_config(argv: Sequence[str], env: Mapping[str, str]) -> tuple[cfg.TrainingConfig, bool]:
    args = build_parser().parse_args(list(argv))
    formats = tuple(part.strip() for part in args.export.split(",") if part.strip())
    config = cfg.TrainingConfig(
        model=args.model,
        dataset=args.dataset,
        output=Path(args.output),
        dataset_digest=args.dataset_digest,
        dataset_format=args.dataset_format,
        validation_split=args.validation_split,
        train_fraction=args.train_fraction,
        hidden_units=args.hidden_units,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        optimizer=args.optimizer,
        seed=args.seed,
        export_formats=formats,
        opset=args.opset,
        quantize=args.quantize,
        prune=args.prune,
        artifact_uri=args.artifact_uri,
        name=args.name,
        signing_key=Path(args.signing_key) if args.signing_key else None,
        encryption_key=Path(args.encryption_key) if args.encryption_key else None,
        device=args.device,
        mixed_precision=not args.no_mixed_precision,
        threads=args.threads,
        pvc_root=Path(env.get("FOGLINE_PVC_ROOT") or "/mnt/pvc"),
        compression=compression_flags.settings_from(args),
        distillation=distillation_flags.settings_from(args),
    )
    cfg.validate(config)
    return config, bool(args.verbose)


def _termination_flag(argv: Sequence[str]) -> str | None:
    """--termination-log read before full parsing, so a parse error can still be reported."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--termination-log")
    known, _ = pre.parse_known_args(list(argv))
    value: str | None = known.termination_log
    return value


def _configure_logging(verbose: bool, primary: bool) -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
        log.addHandler(handler)
        # Some libraries install a root handler on import; one copy of each line is enough.
        log.propagate = False
    level = logging.DEBUG if verbose else logging.INFO
    log.setLevel(level if primary else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    env = os.environ
    primary = env.get("RANK", "0") == "0"
    path, explicit = termination.resolve_path(_termination_flag(arguments), env)
    # The kubelet stops a pod with SIGTERM: raise it as an exception in the training loop, so
    # the run ends with its checkpoint intact, an error line and a termination message.
    handles_signals = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if handles_signals else None
    try:
        return _run(arguments, env, path, explicit, primary)
    finally:
        if handles_signals:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupted(signum: int, frame: object) -> NoReturn:
    # A second SIGTERM must not cut short the report of the first; SIGKILL still ends it.
    signal.signal(signum, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


def _run(
    arguments: list[str], env: Mapping[str, str], path: Path, explicit: bool, primary: bool
) -> int:
    try:
        try:
            config, verbose = parse_config(arguments, env)
        except SystemExit as done:  # --help
            return int(done.code or 0)
        _configure_logging(verbose, primary)
        if explicit and primary:
            termination.check_writable(path)
        _check_keys(config)
        from fogline.workloads.trainer.datasets import load_dataset

        dataset = load_dataset(
            config.dataset,
            fmt=config.dataset_format,
            digest=config.dataset_digest,
            pvc_root=config.pvc_root,
        )
        from fogline.workloads.trainer.pipeline import run_training

        try:
            outcome = run_training(config, dataset, env)
        except OSError as err:  # the dataset is in memory by now: this is the output storage
            classified = storage_error(f"--output {config.output}", err)
            if classified is None:
                raise
            raise classified from err
        if outcome is not None:
            if publish.needs_publishing(config.artifact_uri):
                try:
                    publish.publish(config.output, str(config.artifact_uri), env)
                except publish.PublishError as err:
                    raise TrainerError(err.reason, str(err), EXIT_RUNTIME_FAILURE) from err
            termination.write_message(path, explicit, outcome.message)
    except TrainerError as err:
        return _fail(err, path, explicit, primary)
    except Interrupted as stop:
        return _fail(interrupted(stop.signal_name), path, explicit, primary)
    except KeyboardInterrupt:
        return _fail(interrupted("SIGINT", exit_code=130), path, explicit, primary)
    except Exception as err:  # an unforeseen failure: full traceback in the log, then report it
        log.error("training failed", exc_info=True)
        text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
        failure = TrainerError("TrainingFailed", text, EXIT_RUNTIME_FAILURE)
        return _fail(failure, path, explicit, primary)
    return 0


def _check_keys(config: cfg.TrainingConfig) -> None:
    """A key that cannot work fails the run before it trains, as bad input (exit 2)."""
    from fogline.workloads import encryption, signatures

    if config.encryption_key is not None:
        try:
            encryption.read_key(config.encryption_key, "spec.output.encryption.keySecret")
        except encryption.ModelKeyError as err:
            raise TrainerError("EncryptionKeyInvalid", f"--encryption-key: {err}") from None
    if config.signing_key is not None:
        try:
            signatures.check_signing_key(config.signing_key)
        except signatures.SigningKeyError as err:
            raise TrainerError("SigningKeyInvalid", f"--signing-key: {err}") from None


def _fail(err: TrainerError, path: Path, explicit: bool, primary: bool) -> int:
    print(f"error: {' '.join(err.message.split())}", file=sys.stderr)  # one line, always
    if primary and err.reason != "TerminationLogNotWritable":
        message = termination.failure_message(err.reason, err.message)
        try:
            termination.write_message(path, explicit, message)
        except TrainerError as unwritten:  # the run failed already; that error is the one line
            log.warning("%s", unwritten.message)
    return err.exit_code
