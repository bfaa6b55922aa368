"""03 - Does the positional encoding matter for regime classification?

Question: on rolling windows of daily market features, does a Transformer encoder classify the forward
volatility regime better with sinusoidal positional encodings (interleaved or stacked channels,
Vaswani et al. 2017), a learnable position table, or no positional information at all?

- Scientific hyperparameter (the arms): positional encoding -- ``sinusoidal_interleaved``,
  ``sinusoidal_stacked``, ``learnable``, ``none`` (control).
- Nuisance hyperparameters (tuned separately in every arm over the same space,
  ``regimetry.studies.DEFAULT_NUISANCE``): learning rate (log 1e-4..3e-3), weight decay (log 1e-6..1e-2),
  dropout (0..0.3), d_model (16/32/64), num_heads (2/4), ff_dim (32/64/128), batch size (32/64/128),
  head (linear, or an MLP whose width 16/32/64 is conditional on it).
- Fixed: 2 encoder blocks, mean pooling, unmasked attention, post-norm, GELU; data = S&P 500 daily bars
  (arch package), 30-bar windows, stride 1, label = 21-day forward realized-volatility tertile fitted on
  each fold's training period; AdamW, balanced class weights.
  Model (``regimetry.studies.RESIDUAL_MODEL``, issue 11): a linear shortcut on the last step's HAR lags
  (log_rv_1/5/22 and log_parkinson_1/5/22), warm-started to a logistic regression, plus the encoder on per-window centred
  inputs (it learns a residual and never sees a level); early stopping and trial choice on validation
  balanced accuracy; the best epoch is restored (``train.warm_start_candidate`` off: keeping the
  warm-started linear model unless an epoch beats it was measured and scored the same).
- Budget (equal per arm): 8 quasi-random (Sobol) trials per arm, the same 8 configurations in every arm,
  on the tuning period (bars before 2008: train 1999-2006, validation 2006-07..2007-09), at most
  15 epochs (early-stopping patience 2), median pruning after 3 trials / 3 epochs; then each arm's best configuration is
  retrained on 5 walk-forward folds x 3 seeds and evaluated once on every fold's test block (together
  2008-01..2018-11). Metrics pooled over the test blocks with 95 % block-bootstrap intervals and paired
  differences between arms and against HAR-RV and persistence, with minimum detectable effects.

Reproduce: ``python experiments/03_encoding_ablation.py`` (two worker processes by default; ``--jobs 1``
for one, ``--trials 20 --seeds 5`` for a larger budget, ``--dataset nasdaq`` for the robustness check,
``--smoke`` for a run of 1-4 minutes).
"""

import sys

from regimetry.studies import RESIDUAL_MODEL, Ablation, Arm, main

ABLATION = Ablation(
    name="03_encoding_ablation",
    question="Does the positional encoding matter for regime classification?",
    scientific="model.positional_encoding (+ model.encoding_style)",
    arms=(
        Arm("sinusoidal_interleaved", {"model.positional_encoding": "sinusoidal", "model.encoding_style": "interleaved"}),
        Arm("sinusoidal_stacked", {"model.positional_encoding": "sinusoidal", "model.encoding_style": "stacked"}),
        Arm("learnable", {"model.positional_encoding": "learnable"}),
        Arm("none", {"model.positional_encoding": "none"}),
    ),
    fixed={**RESIDUAL_MODEL, "model.num_layers": 2, "model.pooling": "mean", "model.attention_mask": "none"},
)

if __name__ == "__main__":
    sys.exit(main(ABLATION))
