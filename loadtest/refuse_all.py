"""An app for measuring what a refusal costs: every click counts as late, so every click
event is answered `overloaded` (README, "What a refusal costs").

    PYTHONPATH=$PWD/loadtest .venv/bin/python loadtest/bench.py --app refuse_all:app ...

Not for serving anyone: admission control's limit is set to -1 s.
"""

from service.app import create_app

app = create_app()
app.runtime.admission.limit.allowed_s = lambda now: -1.0  # type: ignore[attr-defined]
