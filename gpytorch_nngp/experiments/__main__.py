"""python -m gpytorch_nngp.experiments {classify,calibration,grid,finite-width} ...: the NNGP paper's experiments."""
import argparse
import sys

from . import classify, figures, finite_width
from .arguments import HelpFormatter


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpytorch_nngp.experiments", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    classify.add_arguments(commands.add_parser("classify", help="classification accuracy and NLL, JSON output",
                                               description=classify.__doc__,
                                               formatter_class=HelpFormatter))
    for name, add, help_text in (("calibration", figures.add_calibration_arguments,
                                  "predicted variance vs realized error (PNG)"),
                                 ("grid", figures.add_grid_arguments,
                                  "accuracy and evidence over a (weight_var, bias_var) grid (PNG)")):
        add(commands.add_parser(name, help=help_text, description=figures.__doc__,
                                formatter_class=HelpFormatter))
    finite_width.add_arguments(commands.add_parser(
        "finite-width", help="trained finite networks vs the NNGP as width grows (PNG)",
        description=finite_width.__doc__, formatter_class=HelpFormatter))
    args = parser.parse_args(argv)
    if args.command == "finite-width":
        return finite_width.run(args)
    if args.command == "classify":
        return classify.main(args)
    if args.command == "calibration":
        return figures.calibration(args)
    return figures.grid(args)


if __name__ == "__main__":
    main(sys.argv[1:])
