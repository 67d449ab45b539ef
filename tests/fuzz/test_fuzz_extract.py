"""The fuzz harness (tests/fuzz/fuzz_extract.py) for a bounded time: MANUALRAG_FUZZ_SECONDS (default 30 in
CI; run it for 10 minutes or more with `python -m tests.fuzz.fuzz_extract --seconds 600`)."""

from __future__ import annotations

import json
import os

import pytest

from tests.fuzz.fuzz_extract import Fuzzer

SECONDS = float(os.environ.get("MANUALRAG_FUZZ_SECONDS", "30"))


@pytest.mark.slow
def test_fuzzed_pdfs_and_images_never_fail_the_parent(tmp_path, capsys):
    fuzzer = Fuzzer(tmp_path, workers=2, ocr=os.environ.get("MANUALRAG_FUZZ_OCR") == "1")
    try:
        report = fuzzer.run(SECONDS)
    finally:
        fuzzer.close()
    with capsys.disabled():
        print("\nfuzz:", json.dumps(report.to_dict()))
    assert not report.failures
    assert report.inputs >= 20, report.to_dict()
    assert report.outcomes["error"] and report.outcomes["indexed"], "mutations both break and keep files"
