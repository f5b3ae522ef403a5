"""python -m gpytorch_nngp.experiments {classify} ...: reproductions of the NNGP paper's experiments."""
import argparse
import sys

from . import classify


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpytorch_nngp.experiments", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    classify.add_arguments(commands.add_parser("classify", help="classification accuracy and NLL, JSON output",
                                               description=classify.__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    if args.command == "classify":
        return classify.main(args)


if __name__ == "__main__":
    main(sys.argv[1:])
