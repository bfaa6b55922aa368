"""04 - Does masking the attention matter for regime classification?

Question: does a look-ahead (causal) mask, which lets step t attend to steps <= t only, change how well
the encoder classifies the forward volatility regime; and does training and evaluating on variable-length
windows (shorter histories NaN-padded and hidden by a padding mask) cost accuracy against fixed windows?

- Scientific hyperparameter (the arms): ``unmasked`` (full attention, fixed 30-bar windows),
  ``lookahead`` (causal mask, fixed windows), ``padding`` (full attention on variable-length windows of
  15..30 real bars, padded steps masked out).
- Nuisance hyperparameters: ``regimetry.studies.DEFAULT_NUISANCE`` (learning rate, weight decay, dropout,
  d_model, num_heads, ff_dim, batch size, head), tuned separately in every arm over the same space.
- Fixed: sinusoidal interleaved encoding, 2 encoder blocks, last-step pooling (so that the causal arm's
  summary sees the whole window), post-norm; data and labels as in 03.
  Model (``regimetry.studies.RESIDUAL_MODEL``, issue 11): a linear shortcut on the last step's HAR lags
  (log_rv_1/5/22 and log_parkinson_1/5/22), warm-started to a logistic regression, plus the encoder on per-window centred
  inputs (it learns a residual and never sees a level); early stopping and trial choice on validation
  balanced accuracy; the best epoch is restored (``train.warm_start_candidate`` off: keeping the
  warm-started linear model unless an epoch beats it was measured and scored the same).
- Budget (equal per arm): 8 Sobol trials per arm on the tuning period (bars before 2008; the
  first walk-forward fold's train/validation blocks), at most 15 epochs; best
  configuration of every arm confirmed on 5 folds (test blocks 2008-01..2018-11) x 3 seeds; pooled block-bootstrap intervals.

Reproduce: ``python experiments/04_mask_ablation.py`` (``--smoke`` for a quick run).
"""

import sys

from regimetry.studies import RESIDUAL_MODEL, Ablation, Arm, main

ABLATION = Ablation(
    name="04_mask_ablation",
    question="Does masking the attention (look-ahead mask; padding mask on variable-length windows) matter?",
    scientific="model.attention_mask / variable-length windows",
    arms=(
        Arm("unmasked", {"model.attention_mask": "none"}),
        Arm("lookahead", {"model.attention_mask": "causal"}),
        Arm("padding", {"model.attention_mask": "none"}, min_window_fraction=0.5),
    ),
    fixed={**RESIDUAL_MODEL, "model.num_layers": 2, "model.pooling": "last", "model.positional_encoding": "sinusoidal",
           "model.encoding_style": "interleaved"},
)

if __name__ == "__main__":
    sys.exit(main(ABLATION))
