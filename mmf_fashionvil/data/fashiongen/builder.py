from mmf.common.registry import registry

from mmf_fashionvil.data.base import FashionBuilder
from mmf_fashionvil.data.fashiongen.dataset import FashionGenDataset


@registry.register_builder("fashiongen")
class FashionGenBuilder(FashionBuilder):
    dataset_class = FashionGenDataset
    config_file = "fashiongen.yaml"

    def __init__(self):
        super().__init__("fashiongen")
