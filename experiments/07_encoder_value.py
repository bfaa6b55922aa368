"""07 - Does the encoder add anything over its own linear shortcut?

Question: the classifier's linear shortcut (``ModelConfig.linear_shortcut``) is a multinomial logistic
regression on the window's last step, which with log realized-volatility inputs is a HAR-RV-like model
(Corsi 2009; here on the HAR lags of close-to-close and of range-based volatility). Does the
Transformer encoder on the whole window add predictive power on top of it, and does it do better
alone or as a residual over the shortcut (HARNet, Reisenhofer et al. 2022)?

- Scientific hyperparameter (the arms): the model's parts --
  ``shortcut_only`` (``use_encoder=False``: the linear map of the last step's HAR lags alone, trained
  by the same code, optimiser, early stopping and budget), ``encoder_only`` (``linear_shortcut=False``
  on raw, uncentred windows: the first round's model) and ``encoder_plus_shortcut`` (the residual model
  03-06 fix, ``regimetry.studies.RESIDUAL_MODEL``: centred windows into the encoder, logits added to
  the shortcut's; the best epoch is restored, ``train.warm_start_candidate`` off).
- Nuisance hyperparameters (tuned separately in every arm over the same space,
  ``regimetry.studies.DEFAULT_NUISANCE``): learning rate, weight decay, dropout, d_model, num_heads,
  ff_dim, batch size, head. For ``shortcut_only`` only the optimiser settings act; it still spends the
  same number of trials, so the budget stays equal.
- Fixed: sinusoidal interleaved encoding, 2 encoder blocks, mean pooling, unmasked attention, post-norm,
  GELU; shortcut inputs log_rv_1/5/22 and log_parkinson_1/5/22 (HAR lags of close-to-close and
  range-based volatility) warm-started to a logistic regression; early stopping and trial choice on
  validation balanced accuracy; data and labels as in 03 (S&P 500 daily
  bars, default features with both sets of HAR lags, 30-bar windows, 21-day forward realized-volatility
  tertiles fitted on each fold's training period).
- Budget (equal per arm): 8 Sobol trials per arm on the tuning period (bars before 2008: train
  1999-2006, validation 2006-07..2007-09), at most 15 epochs; each arm's best configuration confirmed
  on 5 walk-forward folds (test blocks 2008-01..2018-11) x 3 seeds; pooled block-bootstrap intervals,
  paired differences between arms and against HAR-RV and persistence, with minimum detectable effects.

Reproduce: ``python experiments/07_encoder_value.py`` (``--dataset nasdaq`` for the robustness check,
``--smoke`` for a quick run).
"""

import sys

from regimetry.studies import RESIDUAL_MODEL, Ablation, Arm, main

ABLATION = Ablation(
    name="07_encoder_value",
    question="Does the Transformer encoder add anything over its own linear shortcut?",
    scientific="model.use_encoder / model.linear_shortcut",
    arms=(
        Arm("shortcut_only", {"model.use_encoder": False, "model.linear_shortcut": True}),
        Arm("encoder_only", {"model.use_encoder": True, "model.linear_shortcut": False, "model.center_windows": False,
                             "model.shortcut_features": ()}),
        Arm("encoder_plus_shortcut", {"model.use_encoder": True, "model.linear_shortcut": True}),
    ),
    fixed={**RESIDUAL_MODEL, "model.num_layers": 2, "model.positional_encoding": "sinusoidal", "model.pooling": "mean",
           "model.attention_mask": "none"},
)

if __name__ == "__main__":
    sys.exit(main(ABLATION))
