"""Dataset-level evaluation metrics for FashionViL (SPEC §3, §9), all values in percent.

Importing this package registers every metric with MMF:

- ``fashionvil_retrieval``, ``fashionvil_retrieval_sample100``: :mod:`.retrieval`;
- ``fashionvil_tgir``, ``fashionvil_tgir_fashion200k``, ``fashionvil_ocir``:
  :mod:`.query_gallery`;
- ``fashionvil_accuracy``, ``fashionvil_macro_f1``: :mod:`.classification`.

:mod:`.ranking` holds what they share: the collect/compute protocol of
:class:`~.ranking.DatasetMetric` and the ranking convention.
"""
from mmf_fashionvil.metrics import classification, query_gallery, retrieval  # noqa: F401
