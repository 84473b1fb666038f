from mmf.common.registry import registry

from mmf_fashionvil.data.base import FashionBuilder
from mmf_fashionvil.data.pretraining.dataset import NUM_ATTRIBUTES_KEY, FashionPretrainingDataset


@registry.register_builder("fashion_pretraining")
class FashionPretrainingBuilder(FashionBuilder):
    dataset_class = FashionPretrainingDataset
    config_file = "fashion_pretraining.yaml"

    def __init__(self):
        super().__init__("fashion_pretraining")
        self.attribute_labels = None  # (source, class count) of the loaded PAC labels

    def load(self, config, dataset_type="train", *args, **kwargs):
        dataset = super().load(config, dataset_type, *args, **kwargs)
        if dataset is not None and dataset.num_attributes:
            self.attribute_labels = (dataset.attribute_labels_from, dataset.num_attributes)
        return dataset

    def update_registry_for_model(self, config):
        super().update_registry_for_model(config)
        if self.attribute_labels is not None:
            registry.register(NUM_ATTRIBUTES_KEY, self.attribute_labels)
