"""Classification metrics for SCR and CR, all values in percent: ``fashionvil_accuracy`` and
``fashionvil_macro_f1``.

Collected fields (``mo`` = model_output, ``sl`` = sample_list):

- ``fashionvil_accuracy`` / ``fashionvil_macro_f1``: mo ``scores`` [B, C] (collected as the
  argmax ``prediction``), sl ``targets``.
"""
import torch

from mmf.common.registry import registry
from mmf_fashionvil.metrics.ranking import DatasetMetric


class _ClassificationMetric(DatasetMetric):
    model_output_keys = ("scores",)
    sample_list_keys = ("targets",)

    def collect(self, sample_list, model_output):
        scores = self._field(model_output, "scores", "model output")
        targets = self._field(sample_list, "targets", "sample list")
        if targets.dim() == 2 and targets.shape[1] == 1:
            targets = targets.squeeze(1)
        if scores.dim() != 2 or targets.dim() != 1:
            raise ValueError(
                f"metric {self.name}: expected scores [B, C] and class-index targets [B], got "
                f"{tuple(scores.shape)} and {tuple(targets.shape)}"
            )
        return {"prediction": scores.detach().argmax(dim=1).cpu(),
                "targets": targets.detach().long().cpu()}

    def _labels(self, collected):
        self._require(collected, ("prediction", "targets"))
        return collected["prediction"], collected["targets"]


@registry.register_metric("fashionvil_accuracy")
class Accuracy(_ClassificationMetric):
    """Top-1 accuracy (%) over the split. Key: ``accuracy``."""

    def __init__(self):
        super().__init__("fashionvil_accuracy")

    def compute(self, collected):
        prediction, targets = self._labels(collected)
        return {"accuracy": 100.0 * float((prediction == targets).float().mean())}


@registry.register_metric("fashionvil_macro_f1")
class MacroF1(_ClassificationMetric):
    """Macro-F1 (%), per class F1 = 2TP / (2TP + FP + FN), in two conventions:

    - ``macro_f1``: the mean over the classes present in the targets OR the predictions —
      scikit-learn's ``f1_score(average="macro")``, MMF's ``macro_f1``, what the authors
      report. A class that is predicted but never true counts with F1 = 0.
    - ``macro_f1_target_classes``: the mean over the classes present in the targets only
      (``f1_score(average="macro", labels=<classes in targets>)``); never lower than
      ``macro_f1``, as it leaves out the zero terms of only-predicted classes."""

    def __init__(self):
        super().__init__("fashionvil_macro_f1")

    def compute(self, collected):
        prediction, targets = self._labels(collected)
        target_classes = set(torch.unique(targets).tolist())
        f1 = {}
        for label in sorted(target_classes | set(torch.unique(prediction).tolist())):
            true_positive = int(((prediction == label) & (targets == label)).sum())
            false_positive = int(((prediction == label) & (targets != label)).sum())
            false_negative = int(((prediction != label) & (targets == label)).sum())
            f1[label] = 2 * true_positive / (2 * true_positive + false_positive + false_negative)
        return {
            "macro_f1": 100.0 * sum(f1.values()) / len(f1),
            "macro_f1_target_classes":
                100.0 * sum(f1[label] for label in target_classes) / len(target_classes),
        }
