"""Each image installs one extra: the edge server and fetch step run without the operator's
packages (kopf, the Kubernetes client, rich, PyYAML) or the trainer's (torch), and a command
of another role says which extra it needs instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
OPERATOR_ONLY = ("kopf", "kubernetes", "rich", "yaml")
TRAINER_ONLY = ("torch", "sklearn", "onnxscript")


def run_without(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter where importing any of `blocked` fails as if the
    package were not installed."""
    prelude = textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = {blocked!r}
        class Absent(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None
        sys.meta_path.insert(0, Absent())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_server_and_fetch_need_neither_operator_nor_trainer_packages() -> None:
    result = run_without(
        OPERATOR_ONLY + TRAINER_ONLY,
        """
        import importlib, pkgutil
        import fogline.workloads.server as server
        for module in pkgutil.iter_modules(server.__path__):
            if module.name != "__main__":  # that one runs the server on import
                importlib.import_module(f"fogline.workloads.server.{module.name}")
        import fogline.workloads.fetch, fogline.workloads.manifest
        from fogline.cli import main
        for command in ("serve", "fetch"):
            try:
                main([command, "--help"])
            except SystemExit as exited:
                assert exited.code == 0, exited.code
        """,
    )
    assert result.returncode == 0, result.stderr


def test_signature_and_key_checks_run_without_operator_or_trainer_packages(tmp_path: Path) -> None:
    """The fetch step and the server verify signatures and open sealed models with the serve
    extra alone (model-signing, cryptography)."""
    result = run_without(
        OPERATOR_ONLY + TRAINER_ONLY,
        f"""
        from pathlib import Path
        from fogline.workloads import encryption, signatures
        try:
            signatures.verify_signature(Path({str(tmp_path)!r}), "sha256:" + "0" * 64,
                                        Path({str(tmp_path / "absent.pem")!r}))
        except signatures.SignatureError as err:
            assert err.reason == "SignerKeyMissing", err.reason
        (Path({str(tmp_path)!r}) / "public.pem").write_text("not a key")
        try:
            signatures.verify_signature(Path({str(tmp_path)!r}), "sha256:" + "0" * 64,
                                        Path({str(tmp_path / "public.pem")!r}))
        except signatures.SignatureError as err:
            assert err.reason == "SignatureMissing", err.reason
        from model_signing import verifying, hashing  # what verify_signature runs
        key = bytes(32)
        assert encryption.open_sealed(key, encryption.seal(key, b"m", "n"), "n") == b"m"
        """,
    )
    assert result.returncode == 0, result.stderr


def test_operator_command_without_its_extra_names_the_extra() -> None:
    result = run_without(
        OPERATOR_ONLY,
        """
        import sys
        from fogline.cli import main
        sys.exit(main(["run"]))
        """,
    )
    assert result.returncode == 1, result.stderr
    assert "pip install 'fogline[operator]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_serve_extra_holds_none_of_the_operator_packages() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    serve = " ".join(project["optional-dependencies"]["serve"] + project["dependencies"])
    for package in ("kopf", "kubernetes", "rich", "pyyaml", "torch"):
        assert package not in serve
