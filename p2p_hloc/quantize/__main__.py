"""``python -m p2p_hloc.quantize``: the quantization step on a raw folder."""

import sys

from ..console import run_cli
from .step import main, parser

if __name__ == "__main__":
    sys.exit(run_cli(parser(), lambda args: main(**vars(args))))
