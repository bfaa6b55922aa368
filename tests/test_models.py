"""The regime classifier: every architecture arm builds, trains, round-trips; padded windows; extraction."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import keras

from regimetry import registry
from regimetry.config import ENCODING_STYLES, ModelConfig
from regimetry.models import attention_scores, build_classifier, check_windows, embed, pad_windows

BATCH, HEADS, T, F, D, CLASSES = 3, 4, 6, 7, 16, 5
ROOT = Path(__file__).resolve().parents[1]

# Every registered option (regimetry.registry), so a new one is tested without editing this file.
ENCODINGS = [(name, "interleaved") for name in registry.POSITIONAL_ENCODINGS] + [
    ("sinusoidal", style) for style in ENCODING_STYLES if style != "interleaved"]
MASKS = list(registry.ATTENTION_MASKS)
POOLINGS = list(registry.POOLINGS)
DEPTHS = [1, 3]


def _config(encoding=("sinusoidal", "interleaved"), mask="none", pooling="mean", depth=1, **kwargs):
    params = dict(
        d_model=D, num_heads=HEADS, key_dim=3, ff_dim=11, num_layers=depth, dropout=0.1,
        positional_encoding=encoding[0], encoding_style=encoding[1], attention_mask=mask, pooling=pooling,
    )
    params.update(kwargs)
    return ModelConfig(**params)


def _windows(seed=0, n=BATCH, length=T):
    return np.random.default_rng(seed).normal(size=(n, length, F)).astype("float32")


def _copy_weights(src: keras.Model, dst: keras.Model) -> None:
    """Copy weights between two classifiers that differ only in window size (the learnable table
    of the shorter model gets the first rows)."""
    assert len(src.weights) == len(dst.weights)
    for a, b in zip(src.weights, dst.weights):
        value = np.asarray(a)
        if value.shape != tuple(b.shape):
            value = value[: b.shape[0]]
        b.assign(value)


# ------------------------------------------------------------------------------------------------
# Every combination of the ablation arms
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "encoding,mask,pooling,depth",
    list(itertools.product(ENCODINGS, MASKS, POOLINGS, DEPTHS)),
    ids=lambda v: "-".join(v) if isinstance(v, tuple) else str(v),
)
def test_every_arm_builds_trains_and_round_trips(encoding, mask, pooling, depth, tmp_path):
    config = _config(encoding, mask, pooling, depth, head_units=(5,) if depth == 3 else (),
                     norm_first=(depth == 3))
    model = build_classifier(config, window_size=T, num_features=F, num_classes=CLASSES)
    assert model.input_shape == (None, T, F) and model.output_shape == (None, CLASSES)
    assert getattr(model, "optimizer", None) is None  # not compiled
    x = _windows(1)
    before = [np.asarray(w).copy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", run_eagerly=True)
    loss = model.train_on_batch(x, np.array([0, 2, 4]))
    assert np.isfinite(loss)
    changed = [not np.array_equal(b, np.asarray(w)) for b, w in zip(before, model.trainable_weights)]
    assert all(changed), [w.path for w, c in zip(model.trainable_weights, changed) if not c]
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (BATCH, CLASSES)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), probs)


def test_layer_names_are_stable():
    model = build_classifier(
        _config(("learnable", "interleaved"), "causal", "cls", depth=2, head_units=(8, 5), norm_first=True),
        T, F, CLASSES,
    )
    names = [layer.name for layer in model.layers]
    assert names == [
        "windows", "input_mask", "projection", "positional_encoding", "cls_token",
        "attention_mask", "encoder_block_0", "encoder_block_1", "final_norm", "pooling", "head_dense_0",
        "head_dropout_0", "head_dense_1", "head_dropout_1", "regime_probabilities",
    ]
    assert model.get_layer("cls_token").position == "last"  # causal mask: CLS after the last step
    assert model.get_layer("pooling").cls_position == "last"
    plain = build_classifier(_config(("none", "interleaved"), "none", "cls"), T, F, CLASSES)
    assert "positional_encoding" not in [layer.name for layer in plain.layers]
    assert plain.get_layer("cls_token").position == "first"
    assert model.get_layer("encoder_block_0").get_config()["key_dim"] == 3


def test_build_errors_name_the_parameter():
    with pytest.raises(ValueError, match="window_size"):
        build_classifier(_config(), 0, F, CLASSES)
    with pytest.raises(ValueError, match="num_features"):
        build_classifier(_config(), T, 2.0, CLASSES)
    with pytest.raises(ValueError, match="num_classes"):
        build_classifier(_config(), T, F, 1)
    with pytest.raises(TypeError, match="ModelConfig"):
        build_classifier({"d_model": D}, T, F, CLASSES)


# ------------------------------------------------------------------------------------------------
# Variable-length windows
# ------------------------------------------------------------------------------------------------
def test_pad_windows_keeps_the_most_recent_steps_at_the_front():
    x = _windows(2)
    padded = pad_windows(x, [6, 4, 1])
    assert padded.shape == (BATCH, T, F) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[0], x[0])
    np.testing.assert_array_equal(padded[1, :4], x[1, 2:])
    assert np.isnan(padded[1, 4:]).all()
    np.testing.assert_array_equal(padded[2, 0], x[2, -1])
    assert np.isnan(padded[2, 1:]).all()
    assert not np.isnan(x).any()  # input untouched


@pytest.mark.parametrize(
    "lengths,match",
    [([6, 4], r"shape \(3,\)"), ([6, 0, 1], r"window 1 has 0"), ([6, 7, 1], r"\[1, 6\]"), ([6, 2.5, 1], "integers")],
)
def test_pad_windows_errors(lengths, match):
    with pytest.raises(ValueError, match=match):
        pad_windows(_windows(), lengths)


def test_check_windows_errors():
    x = _windows()
    with pytest.raises(ValueError, match="3-D"):
        check_windows(x[0])
    with pytest.raises(ValueError, match="window_size=5"):
        check_windows(x, window_size=5)
    with pytest.raises(ValueError, match="num_features=8"):
        check_windows(x, num_features=8)
    bad = x.copy()
    bad[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"window 2, step 3"):
        check_windows(bad)
    bad = x.copy()
    bad[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"window 1, step 0, feature 0"):
        check_windows(bad)
    assert check_windows(pad_windows(x, [1, 2, 3]), T, F).shape == (BATCH, T, F)


@pytest.mark.filterwarnings("ignore:You are using a softmax over axis")  # Keras, on the 1-step model
@pytest.mark.parametrize(
    "encoding,mask,pooling",
    [(("sinusoidal", "interleaved"), "causal", "cls"), (("learnable", "interleaved"), "none", "last"),
     (("none", "interleaved"), "causal", "attention"), (("sinusoidal", "stacked"), "none", "mean"),
     (("learnable", "interleaved"), "causal", "max"), (("sinusoidal", "interleaved"), "none", "cls")],
)
def test_padded_window_predicts_like_the_truncated_window(encoding, mask, pooling):
    config = _config(encoding, mask, pooling, depth=2, head_units=(5,))
    full = build_classifier(config, T, F, CLASSES)
    x = _windows(3)
    lengths = [6, 4, 1]
    padded = pad_windows(x, lengths)
    probs = np.asarray(full(padded))
    assert np.isfinite(probs).all()
    for i, length in enumerate(lengths):
        short = build_classifier(config, length, F, CLASSES)
        _copy_weights(full, short)
        expected = np.asarray(short(x[i:i + 1, T - length:]))[0]
        np.testing.assert_allclose(probs[i], expected, atol=1e-5, rtol=1e-5)
    # Same model, fixed windows: no padding mask in effect, and a different answer than padded.
    assert not np.allclose(np.asarray(full(x))[1], probs[1])


def test_older_steps_beyond_the_length_do_not_matter_and_empty_windows_are_finite():
    model = build_classifier(_config(("learnable", "interleaved"), "causal", "mean", depth=2), T, F, CLASSES)
    x = _windows(4)
    other = x.copy()
    other[:, :3] += 10.0  # the steps pad_windows drops for lengths 3
    np.testing.assert_array_equal(
        np.asarray(model(pad_windows(x, [3, 3, 3]))), np.asarray(model(pad_windows(other, [3, 3, 3])))
    )
    empty = np.full((BATCH, T, F), np.nan, "float32")
    assert np.isfinite(np.asarray(model(empty))).all()


# ------------------------------------------------------------------------------------------------
# Extraction and persistence
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", MASKS)
def test_attention_scores_and_embed_with_cls(mask, tmp_path):
    depth = 2
    model = build_classifier(_config(("sinusoidal", "interleaved"), mask, "cls", depth=depth), T, F, CLASSES)
    x = pad_windows(_windows(5), [6, 4, 2])
    scores = attention_scores(model, x)
    assert len(scores) == depth
    for s in scores:
        assert s.shape == (BATCH, HEADS, T + 1, T + 1) and s.dtype == np.float32
        assert np.isfinite(s).all()
    cls = -1 if mask == "causal" else 0
    first_step = 0 if mask == "causal" else 1
    # The CLS row attends to every real step (window 1: 4 real steps) and never to padding.
    real_keys = [first_step + k for k in range(4)] + [cls % (T + 1)]
    assert np.all(scores[0][1, :, cls, real_keys] > 0)
    padded_keys = [first_step + k for k in range(4, T)]
    assert np.all(scores[0][1, :, :, padded_keys] == 0)
    if mask == "causal":  # the first real step sees only itself
        np.testing.assert_allclose(scores[0][0, :, 0, 0], 1.0, atol=1e-6)
    vectors = embed(model, x)
    assert vectors.shape == (BATCH, D)
    pooled = keras.Model(model.input, model.get_layer("pooling").output)
    np.testing.assert_allclose(vectors, np.asarray(pooled(x)), atol=1e-6)
    # Reloaded model: same scores and embeddings.
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for a, b in zip(scores, attention_scores(loaded, x)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(embed(loaded, x), vectors, atol=1e-6)


def test_extraction_without_cls_is_batched_and_validates():
    model = build_classifier(_config(("learnable", "interleaved"), "causal", "attention", depth=3), T, F, CLASSES)
    x = _windows(6, n=5)
    scores = attention_scores(model, x, batch_size=2)
    assert [s.shape for s in scores] == [(5, HEADS, T, T)] * 3
    upper = np.triu(np.ones((T, T), bool), 1)
    assert all(np.all(s[:, :, upper] == 0) for s in scores)
    np.testing.assert_allclose(embed(model, x, batch_size=2), embed(model, x), atol=1e-6)
    many = _windows(7, n=9)  # more than four batches: the compiled predict path
    np.testing.assert_allclose(embed(model, many, batch_size=2), embed(model, many), atol=1e-5)
    for a, b in zip(attention_scores(model, many, batch_size=2), attention_scores(model, many)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="window_size=6"):
        embed(model, x[:, :4])
    with pytest.raises(ValueError, match="batch_size"):
        embed(model, x, batch_size=0)
    plain = keras.Sequential([keras.Input((T, F)), keras.layers.Flatten(), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="no layer named"):
        embed(plain, x)


def test_load_in_a_fresh_process_after_importing_models(tmp_path):
    model = build_classifier(
        _config(("learnable", "interleaved"), "causal", "cls", depth=2, head_units=(5,)), T, F, CLASSES
    )
    x = pad_windows(_windows(7), [6, 3, 5])
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import regimetry.models as models
        model = keras.saving.load_model({str(tmp_path / 'm.keras')!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.save({str(tmp_path / 'p.npy')!r}, np.asarray(model(x)))
        np.save({str(tmp_path / 'e.npy')!r}, models.embed(model, x))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), np.asarray(model(x)))
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), embed(model, x), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Linear shortcut (issue 11)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_encoder", [True, False], ids=["encoder+shortcut", "shortcut-only"])
def test_linear_shortcut_round_trips_with_identical_predictions(use_encoder, tmp_path):
    config = ModelConfig(d_model=8, num_heads=2, ff_dim=12, num_layers=1, linear_shortcut=True,
                         use_encoder=use_encoder)
    model = build_classifier(config, window_size=T, num_features=F, num_classes=CLASSES)
    names = {layer.name for layer in model.layers}
    assert {"linear_shortcut", "shortcut_last_step", "regime_probabilities"} <= names
    assert ("encoder_block_0" in names) == use_encoder
    x = _windows(1)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", run_eagerly=True)
    model.train_on_batch(x, np.array([0, 2, 4]))
    probs = np.asarray(model(x, training=False))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), probs)
    if use_encoder:
        assert embed(loaded, x).shape == (BATCH, 8)
    else:
        with pytest.raises(ValueError, match="encoder_block_0"):
            attention_scores(loaded, x)


def test_shortcut_only_is_a_logistic_regression_on_the_last_real_step():
    config = ModelConfig(linear_shortcut=True, use_encoder=False)
    model = build_classifier(config, window_size=T, num_features=F, num_classes=CLASSES)
    x = _windows(2)
    dense = model.get_layer("linear_shortcut")
    kernel, bias = (np.asarray(w) for w in dense.weights)
    logits = x[:, -1, :] @ kernel + bias
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(model(x, training=False)), expected, rtol=1e-5, atol=1e-6)
    # earlier steps do not matter; with padding, the last REAL step is used
    changed = x.copy()
    changed[:, :-1, :] += 3.0
    np.testing.assert_allclose(np.asarray(model(changed)), np.asarray(model(x)), rtol=1e-6)
    padded = pad_windows(x, np.full(BATCH, T - 2))
    last_real = x.copy()
    np.testing.assert_allclose(np.asarray(model(padded)), np.asarray(model(last_real)), rtol=1e-5, atol=1e-6)


def test_shortcut_config_errors():
    with pytest.raises(ValueError, match="ModelConfig.use_encoder"):
        ModelConfig(use_encoder=False)
    with pytest.raises(ValueError, match="ModelConfig.linear_shortcut"):
        ModelConfig(linear_shortcut="yes")
    with pytest.raises(ValueError, match="ModelConfig.shortcut_features"):
        ModelConfig(linear_shortcut=True, shortcut_features=("a", "a"))
    config = ModelConfig(linear_shortcut=True, shortcut_features=("f1", "nope"))
    with pytest.raises(ValueError, match="needs feature_names"):
        build_classifier(config, T, F, CLASSES)
    with pytest.raises(ValueError, match=r"\['nope'\] not among the input features"):
        build_classifier(config, T, F, CLASSES, feature_names=[f"f{i}" for i in range(F)])


def test_window_centering_removes_the_level_and_ignores_padding():
    from regimetry.layers import WindowCentering

    x = _windows(3).astype("float32")
    centred = np.asarray(WindowCentering()(x))
    np.testing.assert_allclose(centred.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(WindowCentering()(x + 7.0)), centred, atol=1e-4)  # level-free
    mask = np.ones(x.shape[:2], dtype=bool)
    mask[:, -2:] = False
    out = np.asarray(WindowCentering()(x, padding_mask=mask))
    np.testing.assert_allclose(out[:, -2:], 0.0)
    np.testing.assert_allclose(out[:, :-2], x[:, :-2] - x[:, :-2].mean(axis=1, keepdims=True), atol=1e-5)


def test_centered_encoder_with_har_shortcut_round_trips_and_reads_only_the_named_features(tmp_path):
    names = [f"f{i}" for i in range(F)]
    config = ModelConfig(d_model=8, num_heads=2, ff_dim=12, num_layers=1, linear_shortcut=True,
                         center_windows=True, shortcut_features=("f5", "f1"))
    model = build_classifier(config, T, F, CLASSES, feature_names=names)
    assert model.get_layer("shortcut_features").indices == (5, 1)
    assert model.get_layer("linear_shortcut").kernel.shape == (2, CLASSES)
    x = _windows(4)
    # the encoder sees no level: shifting every step of a feature the shortcut ignores changes nothing
    shifted = x.copy()
    shifted[:, :, 3] += 5.0
    np.testing.assert_allclose(np.asarray(model(shifted)), np.asarray(model(x)), atol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert embed(loaded, x).shape == (BATCH, 8)


@pytest.mark.parametrize("field", sorted(registry.BY_FIELD))
def test_config_and_builder_read_one_registry(field):
    """Issue 13: config validation accepts exactly the registered names, every one of them builds, and
    a name missing from the registry fails in the builder too (no silent fall-through), listing the
    registered names."""
    from regimetry import config as C

    names = list(registry.BY_FIELD[field])
    allowed = {"positional_encoding": C.POSITIONAL_ENCODINGS, "attention_mask": C.ATTENTION_MASKS,
               "pooling": C.POOLINGS}[field]
    assert list(allowed) == names
    base = dict(d_model=8, num_heads=2, ff_dim=8, num_layers=1)
    for name in names:
        model = build_classifier(ModelConfig(**base, **{field: name}), window_size=5, num_features=3, num_classes=3)
        assert model.output_shape == (None, 3)
        if field == "positional_encoding":
            assert ("positional_encoding" in [layer.name for layer in model.layers]) == (name != "none")
    with pytest.raises(ValueError, match=rf"ModelConfig.{field}: expected one of \[.*\], got 'tAPE'"):
        ModelConfig(**base, **{field: "tAPE"})
    fake = ModelConfig(**base)
    object.__setattr__(fake, field, "tAPE")  # as if a name passed validation but had no factory
    with pytest.raises(ValueError, match=rf"ModelConfig.{field}: expected one of {re.escape(str(names))} "
                                         r"\(regimetry.registry\), got 'tAPE'"):
        build_classifier(fake, window_size=5, num_features=3, num_classes=3)


def test_the_registry_imports_no_keras():
    """Config validation reads the registry, and the command line must not pull in Keras for it."""
    code = ("import sys; import regimetry.config, regimetry.registry; "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_config_lists_the_layers_own_styles_and_activations():
    """The two option lists that are arguments of one layer rather than registered layers."""
    from regimetry import config as C
    from regimetry.layers import encoder, positional

    assert C.ENCODING_STYLES == positional.STYLES and C.ACTIVATIONS == encoder.ACTIVATIONS
