"""Verifier combinators and model-free verifiers, over any modality's `Verifier`.

* `ensemble` — several verifiers as one (mean of scores, or mean of within-call ranks);
* `Calibrated` — InfAlign's calibrated reward: a score becomes its quantile among reference samples;
* `SelfEvaluation` — the generator's own normalised likelihood (no extra model);
* `flaws` — abstention and a false-positive-aware choice of N (Inference Scaling fLaws).
"""

from ponder.search.verifiers.calibration import Calibrated, quantile_scores
from ponder.search.verifiers.ensemble import Ensemble, ProcessEnsemble, ensemble
from ponder.search.verifiers.flaws import accuracy_bound, estimate_rates, expected_accuracy, fp_aware_n
from ponder.search.verifiers.self_eval import SelfEvaluation

__all__ = ["Calibrated", "Ensemble", "ProcessEnsemble", "SelfEvaluation", "accuracy_bound", "ensemble",
           "estimate_rates", "expected_accuracy", "fp_aware_n", "quantile_scores"]
