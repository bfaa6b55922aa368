"""regimetry: market regime detection and classification with Transformer encoders.

The data flow runs one way: source -> features -> labels -> windows -> chronological splits with an
embargo -> model -> training -> study harness -> MLflow tracking -> papermill reports.
"""

from regimetry import _quiet_tensorflow

# Keep TensorFlow's C++ start-up chatter out of researchers' terminals (real errors still show).
_quiet_tensorflow.install()

__version__ = "0.1.0"
