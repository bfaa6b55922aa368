"""06 - Does the pooling step matter for regime classification?

Question: how should the encoder's sequence of step representations be summarised for the regime head:
mean over steps, max over steps, a learned CLS token, the last step, or learned attention pooling?

- Scientific hyperparameter (the arms): ``model.pooling`` in {mean, max, cls, last, attention}.
- Nuisance hyperparameters: ``regimetry.studies.DEFAULT_NUISANCE``, tuned separately in every arm.
- Fixed: sinusoidal interleaved encoding, 2 encoder blocks, unmasked attention, post-norm; data and
  labels as in 03.
  Model (``regimetry.studies.RESIDUAL_MODEL``, issue 11): a linear shortcut on the last step's HAR lags
  (log_rv_1/5/22 and log_parkinson_1/5/22), warm-started to a logistic regression, plus the encoder on per-window centred
  inputs (it learns a residual and never sees a level); early stopping and trial choice on validation
  balanced accuracy; the best epoch is restored (``train.warm_start_candidate`` off: keeping the
  warm-started linear model unless an epoch beats it was measured and scored the same).
- Budget (equal per arm): 8 Sobol trials per arm on the tuning period (bars before 2008; the
  first walk-forward fold's train/validation blocks), at most 15 epochs; best
  configuration of every arm confirmed on 5 folds (test blocks 2008-01..2018-11) x 3 seeds; pooled block-bootstrap intervals.

Reproduce: ``python experiments/06_pooling_ablation.py`` (``--smoke`` for a quick run).
"""

import sys

from regimetry.studies import RESIDUAL_MODEL, Ablation, Arm, main

ABLATION = Ablation(
    name="06_pooling_ablation",
    question="Does the pooling step matter for regime classification?",
    scientific="model.pooling",
    arms=tuple(Arm(mode, {"model.pooling": mode}) for mode in ("mean", "max", "cls", "last", "attention")),
    fixed={**RESIDUAL_MODEL, "model.num_layers": 2, "model.positional_encoding": "sinusoidal", "model.attention_mask": "none"},
)

if __name__ == "__main__":
    sys.exit(main(ABLATION))
