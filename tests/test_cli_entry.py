"""The `chameleon-serve` entry point: dispatch, and clear words when an install lacks the server extra."""
import subprocess
import sys

BLOCK_UVICORN = "import sys; sys.modules['uvicorn'] = None; from chameleon_serve.cli import main; sys.exit(main(sys.argv[1:]))"


def run(*args, code=None):
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "chameleon_serve.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_no_command_prints_help_and_exits_2():
    result = run()
    assert result.returncode == 2 and "serve" in result.stdout and "chat" in result.stdout


def test_serve_without_the_server_extra_says_what_to_install():
    result = run("serve", "--help", code=BLOCK_UVICORN)
    assert result.returncode == 1
    assert "pip install 'chameleon-serve[server]'" in result.stderr and "uvicorn" in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_never_needs_the_server_extra():
    result = run("chat", "--help", code=BLOCK_UVICORN)
    assert result.returncode == 0 and "--out" in result.stdout


def test_serve_refuses_nonsense_limits_naming_the_flag():
    for flag, value, words in [("--max-sequences", "0", "at least 1"), ("--port", "70000", "0..65535"),
                               ("--request-timeout", "-1", "more than 0"), ("--cpu-threads", "two", "whole number")]:
        result = run("serve", flag, value)
        assert result.returncode == 2, (flag, result.stderr)
        assert flag in result.stderr and words in result.stderr
