"""Import costs seen from a fresh interpreter (a subprocess, so not a unit test)."""

from __future__ import annotations

import subprocess
import sys


def test_host_without_torch_never_imports_it() -> None:
    code = (
        "import sys, numpy as np\n"
        "from PIL import Image\n"
        "from gridgen._codec import decode, encode\nfrom gridgen._json import text_event\n"
        "v = {'a': (1, 2), 'arr': np.ones(3), 'img': Image.new('RGB', (4, 4))}\n"
        "out = decode(encode(v))\n"
        "text_event(out)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
