from mmf.common.registry import registry

from mmf_fashionvil.data.base import FashionBuilder
from mmf_fashionvil.data.fashion200k.dataset import Fashion200kTGIRDataset


@registry.register_builder("fashion200k_tgir")
class Fashion200kTGIRBuilder(FashionBuilder):
    dataset_class = Fashion200kTGIRDataset
    config_file = "fashion200k_tgir.yaml"

    def __init__(self):
        super().__init__("fashion200k_tgir")
