"""Stopping a run on SIGTERM (scheduler pre-emption, `kill`) so that it ends failed, never 'completed'.

Lightning on its own turns SIGTERM into SIGTERMException, a SystemExit of status 0, so a killed run
looked successful. Here the first SIGTERM raises RunStopped where the run is; as a library on the
way may swallow it (a bare `except:` such as the `datasets` fingerprint hashing), the request is
also kept and raised again at the next training step (StopCallback) or stage boundary (check_stop).
The run then ends through its error path: summary.json with status 'stopped', exit 128 + signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import lightning.pytorch as pl

# Signal numbers received while stop_on_signals was active (the first is the one reported).
STOP_REQUESTS: list[int] = []


class RunStopped(BaseException):
    """A signal asked the run to stop (a BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way swallows it)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")


def check_stop() -> None:
    """Raise RunStopped if a stop signal came (also when a library swallowed the first raise)."""
    if STOP_REQUESTS:
        raise RunStopped(STOP_REQUESTS[0])


@contextlib.contextmanager
def stop_on_signals(signums=(signal.SIGTERM,)):
    """Within the block, the first of `signums` raises RunStopped (Lightning calls this handler after
    its own while it trains); later ones are only recorded, so that the summary is written whole."""
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return
    STOP_REQUESTS.clear()

    def handler(signum, frame):
        first = not STOP_REQUESTS
        STOP_REQUESTS.append(signum)
        if first:
            raise RunStopped(signum)

    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class StopCallback(pl.Callback):
    """Raises a pending stop request at the next training or evaluation batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        check_stop()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        check_stop()
