"""Imported first by a benchmark script: moves this folder behind the standard library on sys.path.

Run as `python bench/X.py`, this folder is sys.path[0], and its queue.py (the queue benchmark)
would shadow the standard library's `queue`, which concurrent.futures (behind asyncio's default
executor) and anyio (behind httpx) import. The folder stays on the path, for `common` and the
scripts that import each other, but after the standard library: it is appended, then its first
occurrence removed (harmless when it was not there). Imports only os and sys, so importing it
first is safe, and it must come before any import that could pull in `queue`.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(_HERE)
sys.path.remove(_HERE)
