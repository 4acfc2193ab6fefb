"""What alignscope prints is alignscope's: other libraries' per-load bars and chatter are switched off here, once.

transformers draws a bar for every load and save ("Loading weights", "Writing model shards"), and
it and huggingface_hub log advice on each load; a pipeline that loads twenty models buries its own
progress under them. alignscope's own bars use tqdm directly and are not affected.
"""

from __future__ import annotations

import os
import sys

# Read by huggingface_hub and transformers when they are imported; setdefault leaves a user's own choice alone.
_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def quiet_libraries() -> None:
    """Hide transformers' and huggingface_hub's progress bars and their info/advice logging.

    Sets the environment switches those libraries read at import (so the CLI stays fast: nothing
    heavy is imported here), and flips the same switches in any of them already imported.
    Errors still print: transformers' verbosity is 'error'.
    """
    for key, value in _ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    bars_off = os.environ["HF_HUB_DISABLE_PROGRESS_BARS"].strip().lower() in ("1", "true", "yes", "on")
    if "huggingface_hub" in sys.modules and bars_off:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging

        if bars_off:
            logging.disable_progress_bar()
        logging.set_verbosity(logging.log_levels.get(os.environ["TRANSFORMERS_VERBOSITY"], logging.ERROR))
