"""What the GPU path needs, checked on CPU (issue 12): a training step of every task that
never waits for the device (no value read back to the host), and every task trained and
evaluated under bf16 autocast, which runs on CPU as it does on a GPU.

Each task runs through the real trainer on the tiny configs and the synthetic catalog: the
six pre-training tasks on one trainer (final_tiny.yaml, the step's task forced), and the
four fine-tunes on theirs."""
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mmf_fashionvil.registry  # noqa: F401  (the model, datasets and metrics the configs name)
from mmf_fashionvil.modeling.losses import drop_skipped
from mmf_fashionvil.tools.attributes import lexicon_tagger, load_lexicon, mine_attributes
from mmf_fashionvil.training.trainer import FashionViLTrainer

CONFIGS = "projects/fashionvil/configs"
PRETRAINING_TASKS = ["itc", "itm", "mlm", "mpfc", "mvc", "pac"]
# task -> (config, dataset) of the fine-tunes
FINETUNING = {
    "xmr": ("finetuning/xmr_tiny.yaml", "fashiongen"),
    "tgir": ("finetuning/tgir_fashioniq_tiny.yaml", "fashioniq"),
    "scr": ("finetuning/scr_category_tiny.yaml", "fashiongen"),
    "ocir": ("finetuning/ocir_nondisjoint_tiny.yaml", "polyvore_ocir"),
}
aten = torch.ops.aten


@pytest.fixture(scope="module")
def pretraining_files(tiny_catalog, make_tokenizer_checkpoint, tmp_path_factory):
    """(attributes folder, image tokenizer checkpoint) for PAC and MPFC on the catalog."""
    attributes = str(tmp_path_factory.mktemp("attributes"))
    lexicon = load_lexicon(os.path.join(tiny_catalog, "vocab", "pos_lexicon.json"))
    mine_attributes(tiny_catalog, attributes, min_count=3, tag_fn=lexicon_tagger(lexicon),
                    tagger_name="lexicon")
    return attributes, make_tokenizer_checkpoint(image_size=64, codebook_size=12)


def trainer_for(task, catalog, save_dir, pretraining_files, *overrides):
    """A loaded trainer of ``task``'s tiny config (the six-task one for pre-training tasks),
    config resolved as mmf_run resolves it, batch 8, no loader workers."""
    if task in PRETRAINING_TASKS:
        attributes, tokenizer = pretraining_files
        config, dataset = "pretraining/final_tiny.yaml", "fashion_pretraining"
        task_args = [f"model_config.fashionvil.heads.mpfc.tokenizer_checkpoint={tokenizer}",
                     f"model_config.fashionvil.heads.pac.attributes_file={attributes}/"
                     "attributes.json",
                     f"dataset_config.fashion_pretraining.attributes_dir={attributes}"]
    else:
        (config, dataset), task_args = FINETUNING[task], []
    opts = [f"config={CONFIGS}/{config}", "model=fashionvil", f"dataset={dataset}",
            f"env.data_dir={catalog}", f"env.save_dir={save_dir}", "training.batch_size=8",
            "evaluation.batch_size=16", "training.num_workers=0", "training.max_updates=2",
            "training.progress_bar=false", *task_args, *overrides]
    return FashionViLTrainer.loaded_from_options(opts)


def tasks_of_a_trainer():
    """(task, tasks sharing its trainer): the pre-training tasks share one."""
    return [("pretraining", PRETRAINING_TASKS)] + [(task, [task]) for task in FINETUNING]


def run_step(trainer, task):
    """One training update of ``task`` (the six-task trainer is told which to run)."""
    from mmf_fashionvil.training.run_log import IntervalStats
    from mmf_fashionvil.training.safety import NonFiniteGuard

    trainer._current_task = lambda: task
    trainer._interval = IntervalStats(trainer.num_updates + 1)
    trainer._guard = NonFiniteGuard(trainer.device)
    trainer._train_update()
    return trainer._interval


# ------------------------------------------------------------------------ no host sync
class HostSyncError(AssertionError):
    pass


class HostReadDetector(TorchDispatchMode):
    """Fails every operation that reads a tensor's value back to the host or sizes a tensor
    from its data (on a GPU, each makes the host wait for the device): ``.item()``,
    ``int()``/``float()``/``bool()`` of a tensor, ``.nonzero()``, ``torch.unique``,
    ``masked_select`` and indexing with a boolean mask; ``.tolist()`` is patched in
    :func:`detect_host_reads`. ``active`` is off while the trainer does host-side work that
    a GPU run also does on the host (reading the next batch, drawing the step's task from
    (seed, update))."""

    READS = {aten._local_scalar_dense, aten.is_nonzero, aten.nonzero, aten.masked_select,
             aten.unique_dim, aten._unique2, aten._unique, aten.unique_consecutive,
             aten.repeat_interleave}
    INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}

    def __init__(self):
        super().__init__()
        self.active = False  # while entered

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if self.active:
            if packet in self.READS:
                raise HostSyncError(f"{func} reads a tensor back to the host")
            if packet in self.INDEXING:
                indices = args[1] if len(args) > 1 else kwargs.get("indices", [])
                if any(i is not None and i.dtype == torch.bool for i in indices):
                    raise HostSyncError(f"{func} indexes with a boolean mask (a data-sized "
                                        "result)")
        return func(*args, **kwargs)


def detect_host_reads(monkeypatch, trainer):
    """A HostReadDetector (enter it around the step), switched off during the trainer's
    host-side work; ``Tensor.tolist`` fails while it is active."""
    detector = HostReadDetector()

    def host_side(method):
        def run(*args, **kwargs):
            detector.active, was = False, detector.active
            try:
                return method(*args, **kwargs)
            finally:
                detector.active = was
        return run

    monkeypatch.setattr(trainer, "_next_train_batch", host_side(trainer._next_train_batch))
    monkeypatch.setattr(trainer, "_current_task", host_side(trainer._current_task))
    tolist = torch.Tensor.tolist

    def checked_tolist(tensor):
        if detector.active:
            raise HostSyncError("Tensor.tolist reads a tensor back to the host")
        return tolist(tensor)

    monkeypatch.setattr(torch.Tensor, "tolist", checked_tolist)
    return detector


def test_the_detector_catches_each_kind_of_host_read(monkeypatch):
    """The instrument itself: each forbidden pattern fails, device-only work passes."""
    x = torch.arange(6.0)
    forbidden = [lambda: x.sum().item(), lambda: int(x[0]), lambda: bool(x.any()),
                 lambda: x.nonzero(), lambda: x[x > 2], lambda: x.tolist(),
                 lambda: torch.unique(x), lambda: x.masked_select(x > 1)]

    class Stub:
        def _next_train_batch(self):
            return x.tolist()  # host side: allowed

        def _current_task(self):
            return int(x[1])

    stub = Stub()
    detector = detect_host_reads(monkeypatch, stub)
    with detector:
        for read in forbidden:
            with pytest.raises(HostSyncError):
                read()
        masked = x.masked_fill(x > 2, 0.0) + x[torch.tensor([0, 1, 2, 3, 4, 5])]
        assert stub._next_train_batch() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        assert stub._current_task() == 1
    assert masked.tolist() == [0.0, 2.0, 4.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("name,tasks", tasks_of_a_trainer(), ids=[n for n, _ in
                                                                  tasks_of_a_trainer()])
def test_a_training_step_never_reads_back_from_the_device(
        name, tasks, tiny_catalog, pretraining_files, tmp_path, monkeypatch):
    trainer = trainer_for(tasks[0], tiny_catalog, tmp_path, pretraining_files)
    detector = detect_host_reads(monkeypatch, trainer)
    for task in tasks:
        before = {k: v.detach().clone() for k, v in trainer.unwrapped_model.named_parameters()
                  if v.requires_grad}
        with detector:
            interval = run_step(trainer, task)
        # The step did train: the loss is finite and parameters moved.
        assert torch.isfinite(interval.loss), task
        moved = [k for k, v in trainer.unwrapped_model.named_parameters()
                 if k in before and not torch.equal(v, before[k])]
        assert moved, task


# --------------------------------------------------------------------------- bf16 on CPU
@pytest.mark.parametrize("name,tasks", tasks_of_a_trainer(), ids=[n for n, _ in
                                                                  tasks_of_a_trainer()])
def test_every_task_trains_and_evaluates_under_bf16_autocast_on_cpu(
        name, tasks, tiny_catalog, pretraining_files, tmp_path):
    trainer = trainer_for(tasks[0], tiny_catalog, tmp_path, pretraining_files,
                          "training.amp.enabled=true", "training.amp.dtype=bf16")
    assert trainer.amp_dtype == torch.bfloat16 and trainer.device.type == "cpu"
    outputs = []
    model_call = trainer.model.__call__

    def recording_call(batch):
        output = model_call(batch)
        outputs.append(output)
        return output

    trainer.model = _CallThrough(trainer.model, recording_call)
    for task in tasks:
        interval = run_step(trainer, task)
        output = outputs[-1]
        assert torch.isfinite(interval.loss), task
        losses = drop_skipped(output["losses"])
        assert losses, task
        for key, value in losses.items():
            # Losses leave autocast in fp32 (their reductions must not round to bf16).
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), (task, key)
        computed_in_bf16 = [key for key, value in output.items()
                            if torch.is_tensor(value) and value.dtype == torch.bfloat16]
        assert computed_in_bf16, (task, "no model output was computed in bf16")
    trainer.model = trainer.unwrapped_model
    report = trainer.evaluate("val")
    assert report["metrics"], name
    for key, value in report["metrics"].items():
        assert isinstance(value, float) and value == value, key  # not NaN
        if "/r@" in key or key.endswith("accuracy"):
            assert 0.0 <= value <= 100.0, key


class _CallThrough:
    """The trainer's model, with calls going through ``call`` (records the outputs)."""

    def __init__(self, model, call):
        self._model, self._call = model, call

    def __call__(self, batch):
        return self._call(batch)

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_channels_last_image_encoder_computes_the_same_features():
    from mmf_fashionvil.modeling.layers import GridImageEncoder

    torch.manual_seed(0)
    encoder = GridImageEncoder("resnet_tiny", width_base=8).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = encoder(image)
        encoder.use_channels_last()
        features = encoder(image)
    assert encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert features.shape == expected.shape == (2, 4, 64)  # 2x2 grid, 8 * 8 channels
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
