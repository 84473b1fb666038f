from mmf.common.registry import registry

from mmf_fashionvil.data.base import FashionBuilder
from mmf_fashionvil.data.polyvore.dataset import NUM_CATEGORIES_KEY, PolyvoreOCIRDataset


@registry.register_builder("polyvore_ocir")
class PolyvoreOCIRBuilder(FashionBuilder):
    dataset_class = PolyvoreOCIRDataset
    config_file = "polyvore_ocir.yaml"

    def __init__(self):
        super().__init__("polyvore_ocir")
        self.num_categories = None

    def load(self, config, dataset_type="train", *args, **kwargs):
        dataset = super().load(config, dataset_type, *args, **kwargs)
        if dataset is not None:
            self.num_categories = dataset.num_categories
        return dataset

    def update_registry_for_model(self, config):
        super().update_registry_for_model(config)
        if self.num_categories is not None:
            registry.register(NUM_CATEGORIES_KEY, self.num_categories)
