"""Datasets that ship with the package (nothing is downloaded at run time)."""

from sdk_tools.data.digits import DIGIT_CLASSES, DigitsSplit, load_digits_split
from sdk_tools.data.loading import Batches, DataError, load_dataset

__all__ = ["DIGIT_CLASSES", "Batches", "DataError", "DigitsSplit", "load_dataset", "load_digits_split"]
