"""What every ``python -m p2p_hloc.<step>`` and ``p2p-hloc`` command shares: one
clean error line instead of a traceback (``--debug`` shows it), exit status 2
for an error in the input, 1 for anything else. Imports no torch."""

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, List, Optional

from . import logger


class InputError(ValueError):
    """Bad input found before or during a run: the message names the file (and
    line, pair or image). Exit status 2 on the command line."""


def add_debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug messages"
    )
    return parser


def add_argument(
    parser: argparse.ArgumentParser,
    name: str,
    *aliases: str,
    required: bool = False,
    **kwargs,
) -> None:
    """``parser.add_argument(name, **kwargs)`` that also accepts the old
    spellings ``aliases`` (hidden from the help; the value goes to ``name``)."""
    dest = name.lstrip("-")
    target = parser
    if required and aliases:
        target = parser.add_mutually_exclusive_group(required=True)
        required = False
    target.add_argument(name, dest=dest, required=required, **kwargs)
    kwargs.pop("help", None)
    for alias in aliases:
        target.add_argument(alias, dest=dest, help=argparse.SUPPRESS, **kwargs)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--weights``, ``--device``, ``--precision``: how the model runs, the same
    in every command that runs one."""
    parser.add_argument(
        "--weights",
        type=Path,
        help="Patch2Pix checkpoint (default: the cached official file)",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="regressor precision: fp32 (default, the official results), opt-in "
        "bf16 (CPUs with bf16, GPUs) or fp16 (GPUs); docs/performance.md",
    )


def _input_errors() -> tuple:
    """The exception types that mean "bad input" (exit 2), as far as their
    modules are already imported (importing them here could pull in torch)."""
    found = [InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError]
    for module, name in (
        ("p2p_hloc.io.h5", "H5Error"),
        ("p2p_hloc.io.raw", "RawMatchesError"),
        ("p2p_hloc.io.text", "PairsError"),
        ("p2p_hloc.preprocess", "ImageError"),
        ("p2p_hloc.model.checkpoint", "CheckpointError"),
        ("p2p_hloc.weights", "WeightsNotFoundError"),
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)


def run_cli(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], object],
    argv: Optional[List[str]] = None,
) -> int:
    """Parse ``argv``, call ``run(args)`` and turn an exception into one line
    ``<prog>: error: <message>`` on stderr. Returns the exit status."""
    if not any(a.dest == "debug" for a in parser._actions):
        add_debug_flag(parser)
    args = parser.parse_args(argv)
    debug = args.debug
    del args.debug
    if debug:
        logger.setLevel(logging.DEBUG)
    try:
        status = run(args)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the whole point: one clean line
        if debug:
            raise
        kind = "" if isinstance(e, _input_errors()) else f"{type(e).__name__}: "
        print(
            f"{parser.prog}: error: {kind}{e} (--debug for the traceback)",
            file=sys.stderr,
        )
        return 2 if not kind else 1
    return status if isinstance(status, int) else 0
