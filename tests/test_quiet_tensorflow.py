"""TensorFlow's C++ start-up lines are dropped, and only those (issue 16)."""

import os
import subprocess
import sys

from regimetry import _quiet_tensorflow

TF_CPP_LINE = r"^[IWEF]\d{4} \d\d:\d\d:\d\d"  # absl/glog prefix: I0000 00:00:1796431982.905321 ...


def test_capture_drops_startup_noise_and_replays_everything_else(capfd):
    with _quiet_tensorflow._CapturedStderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1.5 123 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n")
        os.write(2, b"E0000 00:00:1.6 123 some_kernel.cc:7] a real error the user must see\n")
        os.write(2, b"UserWarning: a Python warning\n")
    err = capfd.readouterr().err
    assert "absl::InitializeLog" not in err and "cuda drivers" not in err
    assert "a real error the user must see" in err and "a Python warning" in err
    assert err.index("a real error") < err.index("a Python warning")  # order kept


def test_importing_the_package_then_keras_prints_no_tensorflow_startup_line():
    code = ("import regimetry, keras, numpy as np\n"
            "from regimetry.layers import NanPaddingMask, SequencePooling\n"
            "w = keras.Input((5, 2)); h, m = NanPaddingMask()(w)\n"
            "model = keras.Model(w, keras.layers.Dense(2, activation='softmax')(SequencePooling('last')(h, padding_mask=m)))\n"
            "model.compile('adam', 'categorical_crossentropy')\n"
            "model.fit(np.ones((8, 5, 2), 'float32'), np.eye(2)[[0, 1] * 4], epochs=1, verbose=0)\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as in a fresh shell
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import re

    assert not re.search(TF_CPP_LINE, proc.stderr, flags=re.M), proc.stderr
    assert "absl::InitializeLog" not in proc.stderr and "cuInit" not in proc.stderr, proc.stderr


def test_the_hook_is_one_shot_and_skipped_once_tensorflow_is_loaded():
    import tensorflow  # noqa: F401  (loaded by the suite anyway)

    _quiet_tensorflow.install()
    assert _quiet_tensorflow._FINDER not in sys.meta_path
