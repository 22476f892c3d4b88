#!/bin/sh
# The chat page in a real headless Chromium. CI does not install a browser, so
# tests/test_chat_page.py skips there; run this on a Debian machine to check it:
#   scripts/browser_check.sh [screenshot.png]
set -e
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt-get update && apt-get install -y chromium chromium-driver
fi
MLXGEN_SCREENSHOT="${1:-chat_page.png}" python -m pytest -q -rs tests/test_chat_page.py
