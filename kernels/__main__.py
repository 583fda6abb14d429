"""`python -m contextlab.kernels install [--user | --sys-prefix | --prefix DIR]`: install the kernel spec."""

from __future__ import annotations

import argparse
import sys

from contextlab.kernels import install_kernelspec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contextlab.kernels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install", help='Install the "ContextLab Python" kernel spec for this Python.')
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="The user's Jupyter data directory (the default).")
    where.add_argument("--sys-prefix", action="store_true", help="This environment (sys.prefix), e.g. a virtualenv.")
    where.add_argument("--prefix", help="Under PREFIX/share/jupyter/kernels.")
    args = parser.parse_args(argv)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install_kernelspec(user=prefix is None, prefix=prefix)
    print(f'Installed the "ContextLab Python" kernel spec in {path}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
