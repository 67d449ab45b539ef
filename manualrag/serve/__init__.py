"""``manualrag serve``: the search API and the web page, on the existing Retriever and index.

Modules: :mod:`.limits` (request bounds and the upload guard), :mod:`.security` (token, Host check,
response headers), :mod:`.state` (the open index, refreshed while ``manualrag index`` updates it),
:mod:`.app` (the FastAPI app and its routes), :mod:`.server` (the command: checks, then uvicorn).
"""

from __future__ import annotations
