"""Model classes built on the network kernels: exact GP classification as in the NNGP paper, and SVGPs."""
from .data import DATASETS, load_dataset
from .exact import ExactNNGPClassifier, shifted_one_hot
from .svgp import SVGPClassifier, SVGPRegressor, train_svgp

__all__ = ["DATASETS", "ExactNNGPClassifier", "SVGPClassifier", "SVGPRegressor", "load_dataset", "shifted_one_hot",
           "train_svgp"]
