from mmf.common.registry import registry

from mmf_fashionvil.data.base import FashionBuilder
from mmf_fashionvil.data.pretraining.dataset import FashionPretrainingDataset


@registry.register_builder("fashion_pretraining")
class FashionPretrainingBuilder(FashionBuilder):
    dataset_class = FashionPretrainingDataset
    config_file = "fashion_pretraining.yaml"

    def __init__(self):
        super().__init__("fashion_pretraining")
