from mmf.common.registry import registry

from mmf_fashionvil.data.base import FashionBuilder
from mmf_fashionvil.data.fashioniq.dataset import FashionIQDataset


@registry.register_builder("fashioniq")
class FashionIQBuilder(FashionBuilder):
    dataset_class = FashionIQDataset
    config_file = "fashioniq.yaml"

    def __init__(self):
        super().__init__("fashioniq")
