"""The client is installable alone (`pip install chameleon-serve`: httpx + pillow): importing it, or running
`chameleon-serve chat`, must never pull in torch, numpy, fastapi or the server side of the package.

Each check runs in a fresh interpreter, since this test process may already have imported torch.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

FORBIDDEN = ["torch", "numpy", "fastapi", "uvicorn", "pydantic", "chameleon_serve.engine", "chameleon_serve.server",
             "chameleon_serve.model", "chameleon_serve.tokenizers"]  # fmt: skip


def modules_loaded_by(code: str) -> list[str]:
    """Run `code` in a fresh interpreter and return which FORBIDDEN modules it imported."""
    probe = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import sys
        print(repr([name for name in {FORBIDDEN!r} if name in sys.modules]))
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


def test_importing_the_client_and_all_its_modules_imports_no_server_dependency():
    assert modules_loaded_by(
        """
        import chameleon_serve.clients
        import chameleon_serve.clients.cli
        from chameleon_serve.clients import AsyncClient, Client, ImageOptions
        Client("http://127.0.0.1:1").close()
        """
    ) == []


def test_chat_help_runs_without_importing_a_server_dependency():
    assert modules_loaded_by(
        """
        import contextlib, io
        from chameleon_serve.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as help_text:
            try:
                main(["chat", "--help"])
            except SystemExit as exit:
                assert exit.code == 0
        assert "exit codes" in help_text.getvalue()
        """
    ) == []


def test_a_failed_chat_command_imports_no_server_dependency_either():
    assert modules_loaded_by(
        """
        from chameleon_serve.cli import main
        assert main(["chat", "hi", "--url", "http://127.0.0.1:9", "--max-retries", "0"]) == 3
        """
    ) == []
