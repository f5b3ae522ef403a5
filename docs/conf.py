"""Sphinx configuration: the API reference (autodoc, napoleon for the Google-style docstrings), the user guide
(MyST markdown) and the tutorials run by sphinx-gallery.

    python -m sphinx -W -b html docs docs/_build/html

GALLERY_SIZE=full runs the tutorials at their full size (hours on a CPU); the default runs them with --quick;
GALLERY_SIZE=off renders them without running them (no figures).
"""
import glob
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

project = "gpytorch_nngp"
author = "the gpytorch_nngp authors"
copyright = "2026, the gpytorch_nngp authors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "sphinx.ext.mathjax", "myst_parser",
              "sphinx_gallery.gen_gallery"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "generate_api.py", "tutorials/*.ipynb", "tutorials/*.py", "tutorials/*.zip",
                    "tutorials/*.md5", "tutorials/*.json"]
html_theme = "furo"
html_title = "gpytorch_nngp"
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Cross-references into our own API must resolve (nitpicky); the libraries we build on have no inventory here (the
# build runs without a network), so references to their types are not checked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|gpytorch|linear_operator|botorch|numpy|pykeops|typing|collections|abc|contextlib)(\..*)?"),
    (r"py:.*", r"(Tensor|LinearOperator|Module|Prior|Interval|Kernel|Size|Generator|NoneType|Dual|Layer|Records)"),
    (r"py:.*", r"(optional|callable|Callable|Sequence|Optional|Union|Tuple|List|Dict|Any|Iterator|int|float|bool|str)"),
    (r"py:.*", r"(Activation|Network|Geometry|PairState|Context|Workspace|Evaluator|RowSharding|GraphInputs)"),
    (r"py:.*", r"gpytorch_nngp\.(functional\.workspace|backends\.evaluators)\.\w+"),  # internal helpers' types
    # napoleon reads the first words of a plain-text "Returns:" line as a type: not a name, so not a reference
    (r"py:(class|exc|obj)", r".*[^\w.].*"),
    (r"py:(class|exc|obj)", r"\w{1,2}"),
]

GALLERY_SIZE = os.environ.get("GALLERY_SIZE", "quick")
FIGURES = os.path.join(HERE, "_build", "gallery_figures")


def _figures_of(src_file: str) -> str:
    return os.path.join(FIGURES, os.path.splitext(os.path.basename(src_file))[0])


def _arguments(gallery_conf, script_vars):
    """The command line each tutorial runs with: its figures go to a folder of their own under the build."""
    out = _figures_of(script_vars["src_file"])
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    return (["--quick"] if GALLERY_SIZE != "full" else []) + ["--out", out]


class TutorialFigures:
    """Image scraper: the tutorials save their figures as PNG files (and close them); each file written by a code
    block is copied into the gallery and shown after it."""

    def __call__(self, block, block_vars, gallery_conf):
        from sphinx_gallery.scrapers import figure_rst

        folder = _figures_of(block_vars["src_file"])
        shown = block_vars.setdefault("tutorial_figures_shown", set())
        paths = []
        for png, target in zip(sorted(set(glob.glob(os.path.join(folder, "*.png"))) - shown),
                               block_vars["image_path_iterator"]):
            shutil.copyfile(png, target)
            shown.add(png)
            paths.append(target)
        return figure_rst(paths, gallery_conf["src_dir"])

    def __repr__(self):
        return "TutorialFigures"


sphinx_gallery_conf = {
    "examples_dirs": "../tutorials",
    "gallery_dirs": "tutorials",
    "filename_pattern": r"/\d\d_",
    "ignore_pattern": r"__init__\.py",
    "plot_gallery": "False" if GALLERY_SIZE == "off" else "True",
    "reset_argv": _arguments,
    "image_scrapers": (TutorialFigures(),),
    "remove_config_comments": True,
    "download_all_examples": False,
    "abort_on_example_error": True,
    "run_stale_examples": True,
    "capture_repr": (),
    "write_computation_times": False,
    "within_subsection_order": "FileNameSortKey",
}
smartquotes = False  # --quick stays two hyphens


# The docstrings are Google style in plain text: shapes like (..., n, d), products like a * b and norms like |x|,
# written for `help()`. After napoleon has turned their sections into fields, the rest is made safe for
# reStructuredText here: `name` is code (default_role), *, | and a trailing _ are literal characters, and a change of
# indentation inside a paragraph becomes a new paragraph (plain text indents continuation lines freely).
default_role = "code"


_OPEN_CODE = [False]  # whether a `code span` opened on an earlier line of the docstring is still open


def _escape(line: str) -> str:
    if line.lstrip().startswith((":param", ":type", ":returns", ":rtype", ":raises", ".. ")):
        head, sep, tail = line.partition(": ") if line.lstrip().startswith(":") else ("", "", line)
        head = head.replace("\\*", "*").replace("*", "\\*")
        return head + sep + _escape_text(tail) if sep else line
    return _escape_text(line)


def _escape_text(text: str) -> str:
    import re

    out = []
    for part in re.split(r"(`)", text):  # code spans (between backticks) are left alone
        if part == "`":
            _OPEN_CODE[0] = not _OPEN_CODE[0]
            out.append(part)
            continue
        if not _OPEN_CODE[0]:
            part = part.replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|")
            part = re.sub(r"(\w)_(\W|$)", r"\1\\_\2", part)
        out.append(part)
    return "".join(out)


def _plain_text_docstring(app, what, name, obj, options, lines):
    _OPEN_CODE[0] = False
    fixed, previous_indent, previous_blank = [], 0, True
    in_field = False
    for line in lines:
        if not line.strip():
            fixed.append("")
            previous_blank = True
            continue
        indent = len(line) - len(line.lstrip())
        starts_field = line.lstrip().startswith(":")
        if starts_field:
            in_field = True
        elif indent == 0:
            in_field = False
        if not previous_blank and indent != previous_indent and not (in_field and not starts_field and indent > 0):
            fixed.append("")
        fixed.append(_escape(line))
        previous_indent, previous_blank = indent, False
    lines[:] = fixed


def setup(app):
    app.connect("autodoc-process-docstring", _plain_text_docstring, priority=600)
suppress_warnings = ["config.cache"]  # sphinx-gallery's settings hold functions (reset_argv, the scraper)
