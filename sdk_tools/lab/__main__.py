"""``python -m sdk_tools.lab serve|register|report`` (same commands as ``memwall lab``)."""

from __future__ import annotations

import argparse

from sdk_tools.lab.cli import configure_lab_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdk_tools.lab", description="memwall device lab")
    configure_lab_parser(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
