"""The engine's life inside the server, without HTTP: loading in the background and draining on shutdown."""
import threading
import time

from chameleon_serve.engine import GenerationRequest, OutputMode
from chameleon_serve.server.runtime import EngineRuntime, State
from chameleon_serve.server.settings import ServerSettings
from chameleon_serve.testing import write_random_checkpoint


def test_every_shutdown_call_waits_until_the_engine_has_stopped(tmp_path):
    """SIGTERM drains on its own thread; the app's shutdown then calls again and must not return (letting
    the process exit) while the first call is still draining."""
    runtime = EngineRuntime(ServerSettings(model_path=write_random_checkpoint(tmp_path / "ckpt")))
    runtime.start_loading()
    deadline = time.monotonic() + 60
    while runtime.state is not State.READY and time.monotonic() < deadline:
        time.sleep(0.05)
    engine = runtime.engine
    handle = engine.submit(GenerationRequest(prompt_tokens=engine.encode_text("x"), max_tokens=500,
                                             output=OutputMode.TEXT, ignore_eos=True))
    next(iter(handle))
    drain = threading.Thread(target=runtime.shutdown, args=(0.5,))  # what SIGTERM does
    drain.start()
    time.sleep(0.05)
    runtime.shutdown(0.5)  # what the app's lifespan does next
    assert not engine.is_running
    assert handle.done or list(handle)[-1].finish_reason in ("length", "cancelled")
    drain.join(5)
