"""Keep TensorFlow's C++ start-up chatter out of researchers' terminals, and only that.

TensorFlow 2.16+ writes a handful of lines straight to file descriptor 2 while its shared libraries
load, before absl's logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` cannot silence them::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. ...
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
    E0000 ... cuda_platform.cc:52] failed call to cuInit: ...   (on the first device query)

:func:`install` puts a finder on ``sys.meta_path`` that wraps the first ``import tensorflow`` (and
the first device query, which is where CUDA is probed) in a capture of descriptor 2. Captured lines
that match the known start-up messages above are dropped; every other line (a real error, a
Python warning) is written back to stderr unchanged, in order. Nothing happens when TensorFlow is
already imported, and the import itself is not triggered by this module: a process that never
touches TensorFlow pays nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

# Start-up lines that carry no information on a CPU machine (matched anywhere in the line).
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|TF-TRT Warning: Could not find TensorRT"
)


class _CapturedStderr:
    """Redirect file descriptor 2 to a temporary file; on exit replay every line but start-up noise."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._file = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        try:
            sys.stderr.flush()
        finally:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        self._file.seek(0)
        text = self._file.read().decode("utf-8", errors="replace")
        self._file.close()
        kept = [line for line in text.splitlines(keepends=True) if not STARTUP_NOISE.search(line)]
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
        return False


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with _CapturedStderr():
            self._loader.exec_module(module)
            # CUDA is probed on the first device query (the cuInit line): do it here, inside the capture.
            module.config.list_physical_devices("GPU")


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        uninstall()  # one-shot: from here on the real finders answer
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _QuietTensorFlowFinder()


def install() -> None:
    """Quiet the next first ``import tensorflow`` of this process (no-op if it is already imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
