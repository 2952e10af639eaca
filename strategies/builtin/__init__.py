"""The built-in strategies, registered in xsilo's ``xsilo.strategies`` entry points."""

from strategies.builtin.fedadagrad import FedAdagrad
from strategies.builtin.fedadam import FedAdam
from strategies.builtin.fedavg import FedAvg
from strategies.builtin.fedavgm import FedAvgM
from strategies.builtin.fedexp import FedExP
from strategies.builtin.fedmedian import FedMedian
from strategies.builtin.fedprox import FedProx
from strategies.builtin.fedtrimmedavg import FedTrimmedAvg
from strategies.builtin.fedyogi import FedYogi
from strategies.builtin.krum import Krum
from strategies.builtin.multikrum import MultiKrum

__all__ = ["BUILTINS", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedExP", "FedMedian",
           "FedProx",
           "FedTrimmedAvg", "FedYogi", "Krum", "MultiKrum"]

BUILTINS = (FedAvg, FedProx, FedAvgM, FedExP, FedAdam, FedYogi, FedAdagrad, FedMedian,
            FedTrimmedAvg, Krum, MultiKrum)
"""Every built-in class, sum-decomposable ones first."""
