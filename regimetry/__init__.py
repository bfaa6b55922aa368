"""regimetry: market regime detection and classification with Transformer encoders.

The data flow runs one way: source -> features -> labels -> windows -> chronological splits with an
embargo -> model -> training -> study harness -> MLflow tracking -> papermill reports.
"""

import os as _os

# Keep TensorFlow's C++ start-up chatter out of researchers' terminals (errors still show).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
