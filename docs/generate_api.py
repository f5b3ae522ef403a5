"""Writes docs/api.rst: every public name of gpytorch_nngp and its subpackages, grouped, each documented once.

    python docs/generate_api.py

Run it after adding a public name (tests/test_docs.py fails until the name is in api.rst)."""
import importlib
import inspect
import os

SECTIONS = [
    ("Kernels", "gpytorch_nngp", ["NNGPKernel", "NTKKernel", "ArchitectureKernel", "GraphNodeKernel"],
     "The GPyTorch kernels. ``NNGPKernel.from_module`` / ``NTKKernel.from_module`` build the kernel of a torch module "
     "(:doc:`guide/architectures`); the design notes explain the recursion (:doc:`design`)."),
    ("Torch modules", "gpytorch_nngp", ["Residual", "Parallel", "SelfAttention", "Elementwise", "Aggregate",
                                        "GraphNetwork"],
     "Real ``torch.nn.Module`` objects (train them, run them) whose infinite-width kernels ``from_module`` knows."),
    ("Activations", "gpytorch_nngp.activations", None,
     "Each activation carries its dual maps, its KeOps formula and its forward-mode derivative (:doc:`design`, "
     "\"Adding an activation\")."),
    ("Graphs", "gpytorch_nngp.graphs", None, "Adjacency helpers, the packing of whole graphs into ``(n, d)`` inputs, "
     "and datasets (:doc:`guide/graphs`)."),
    ("Backends and shardings", "gpytorch_nngp.backends", None,
     "Lazy, KeOps and distributed evaluation, and the memory budget every size comes from (:doc:`guide/backends`)."),
    ("Models", "gpytorch_nngp.models", None, "Classifiers and regressors of the paper's experiments "
     "(:doc:`guide/classification`)."),
    ("DNN2GP", "gpytorch_nngp.dnn2gp", None,
     "A trained network's Laplace/GGN posterior as a GP (:doc:`guide/dnn2gp`)."),
    ("Training dynamics", "gpytorch_nngp.predict", None, "neural-tangents' ``predict`` API (:doc:`guide/dynamics`)."),
    ("Experiments", "gpytorch_nngp.experiments", None, "The paper's experiments as a function and a command "
     "(``python -m gpytorch_nngp.experiments``)."),
    ("Layer algebra", "gpytorch_nngp.algebra", None, "The infinite-width maps of the layers, for adding a layer "
     "(:doc:`design`, \"Adding a layer\")."),
    ("Functional", "gpytorch_nngp.functional", None, "Pure tensor math below the layers."),
    ("Warnings", "gpytorch_nngp.warnings", None, "Warnings the library raises."),
]


def main():
    seen = {}
    out = ["API reference", "=============", "",
           "Every public name of ``gpytorch_nngp`` and its subpackages. Names re-exported in several places "
           "(``gpytorch_nngp.NNGPKernel`` is ``gpytorch_nngp.kernels.NNGPKernel``) are documented once, where they "
           "are listed first below.", ""]
    for title, module, names, intro in SECTIONS:
        mod = importlib.import_module(module)
        names = list(mod.__all__) if names is None else names
        out += [title, "-" * len(title), "", intro, "", f".. currentmodule:: {module}", ""]
        for name in names:
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or name.startswith("__"):
                continue
            key = id(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else (module, name)
            if key in seen:
                out += [f"``{module}.{name}``: see :py:obj:`{seen[key]}`.", ""]
                continue
            seen[key] = f"{module}.{name}"
            if inspect.isclass(obj):
                # from_module is defined once on a private base of NNGPKernel / NTKKernel: name it to show it
                members = "" if "from_module" in vars(obj) or not hasattr(obj, "from_module") else " from_module"
                out += [f".. autoclass:: {name}", f"   :members:{members}", ""]
            elif callable(obj):
                out += [f".. autofunction:: {name}", ""]
            else:
                out += [f".. autodata:: {name}", "   :no-value:", ""]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "api.rst")
    with open(path, "w") as f:
        f.write("\n".join(out).rstrip() + "\n")


if __name__ == "__main__":
    main()
