"""What a run prints: library warnings and adverts grain knows do not apply to its runs are silenced, and
progress bars are left out where the output is not a terminal (a log file would keep every redraw)."""

from __future__ import annotations

import logging
import sys
import warnings

import datasets
import huggingface_hub.utils
import transformers

# (message pattern, why it does not apply to a grain run)
SILENCED_WARNINGS = (
    (r".*isinstance\(treespec, LeafSpec\)", "Lightning's own use of a torch API that torch 2.13 deprecates"),
    (r"Found \d+ module\(s\) in eval mode at the start of training",
     "the student's LightningModule holds the frozen teacher in eval mode on purpose"),
    (r"Initializing zero-element tensors is a no-op", "compact layers whose sub-layer kept no unit are empty on purpose"),
    (r".*does not have many workers", "tokenized splits live in memory: trainer.num_workers=0 is grain's default"),
    (r"It is recommended to use `self\.log\(.*sync_dist=True\)`",
     "under DDP grain's evaluators gather every process's rows before computing: the metrics are the whole split's"),
)
ADVERT_PREFIX = "💡 Tip:"  # Lightning's advertisement for its cloud logger, printed at every Trainer start


class NoAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERT_PREFIX)


def quiet_libraries(stream=sys.stderr) -> None:
    """Silence `SILENCED_WARNINGS` and Lightning's advert; where `stream` (where progress bars draw) is not a
    terminal, turn off the progress bars of datasets, transformers and huggingface_hub. grain's own
    progress is a log line then (`trainer.progress`)."""
    for pattern, _ in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(NoAdvert())
    if not stream.isatty():
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()
