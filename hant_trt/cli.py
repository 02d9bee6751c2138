"""`hant-trt`: a thin map from subcommands onto the package API.

The one place where a UserError becomes one line on stderr and exit code 2; any other exception is
an internal error (exit 1; `--verbose` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from . import __version__
from .commands import STAGE_HELP, register
from .errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as the one line every other bad input gets (and exit 2)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _stage_parser(sub, name: str, extra=None):
    p = sub.add_parser(name, help=STAGE_HELP[name], description=STAGE_HELP[name])
    p.add_argument("run_dir", help="run directory (created if missing)")
    p.add_argument("--config", help="TOML/JSON run config (default: the one saved in the run directory)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set distill.steps=100 (repeatable)")
    if extra:
        extra(p)
    return p


# -- subcommands ----------------------------------------------------------------------------------
def cmd_teacher(args) -> int:
    from .teacher.load import load_teacher
    from .teacher.decompose import decompose
    from .teacher.stage import slot_table, teacher_record

    t = load_teacher(args.model, args.weights, args.resolution)
    d = decompose(t.model, t.resolution)
    if args.json:
        print(json.dumps(teacher_record(t, d), indent=2))
    else:
        print(f"{t.name}: weights {t.weights}, input {t.resolution}x{t.resolution}, "
              f"{len(d.slots)} slots ({d.family})")
        print(slot_table(d.slots))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="hant-trt",
        description="Hardware-aware network transformation: distil cheaper ops per layer, measure "
                    "their true latency, pick the best under a budget, build one engine.",
        epilog="stages, in order: teacher → distill → score → profile → search → build",
    )
    p.add_argument("--version", action="version", version=f"hant-trt {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("teacher", help=STAGE_HELP["teacher"], description=STAGE_HELP["teacher"])
    t.add_argument("model", help="timm model name, e.g. efficientnet_lite0")
    t.add_argument("--weights", default="default",
                   help="default | offline-lite0 | offline-lite1 | hub | random | PATH (.safetensors, .pth)")
    t.add_argument("--resolution", type=int, default=None, help="input side in pixels (at least 32)")
    t.add_argument("--json", action="store_true", help="print the slot table as JSON")
    t.set_defaults(func=cmd_teacher)

    register(sub, _stage_parser)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"hant-trt {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hant-trt {args.command}: interrupted (finished work is kept; rerun to resume)",
              file=sys.stderr)
        return 130
    except Exception as exc:  # internal error
        if args.verbose:
            traceback.print_exc()
        else:
            print(f"hant-trt {args.command}: internal error: {type(exc).__name__}: {one_line(exc)} "
                  f"(rerun with --verbose for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
