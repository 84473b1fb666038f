"""Tasks have one owner (mmf_fashionvil.tasks): the model and the trainer read
training_tasks alike. And one import registers everything for Python users."""
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from helpers import REPO, build_model, tiny_config
from mmf_fashionvil.tasks import parse_tasks


def test_one_task_given_as_a_string_is_one_task_for_model_and_trainer():
    # `training_tasks=itc` on the command line arrives as a string, not a list
    config = tiny_config(training_tasks="itc")
    assert parse_tasks(config) == (["itc"], [1.0])
    assert build_model(config).training_tasks == ["itc"]


def test_unknown_and_repeated_tasks_are_refused_by_the_model():
    for tasks in (["itc", "itx"], ["itc", "itc"], []):
        with pytest.raises(ValueError, match="training_tasks"):
            build_model(tiny_config(training_tasks=tasks))
    # the trainer takes any model's task names as given
    assert parse_tasks(OmegaConf.create({"training_tasks": ["a", "b"],
                                         "task_probabilities": [1, 3]})) == (
        ["a", "b"], [0.25, 0.75])


EXPECTED_NAMES = {
    "model_name_mapping": ["fashionvil", "fashionvil_image_tokenizer"],
    "trainer_name_mapping": ["fashionvil_trainer"],
    "builder_name_mapping": ["fashiongen", "fashion_pretraining", "fashioniq",
                             "fashion200k_tgir", "polyvore_ocir"],
    "loss_name_mapping": [f"fashionvil_{name}" for name in (
        "itc", "itm", "mlm", "mpfc", "mvc", "pac", "tgir", "ocir", "classification")],
    "metric_name_mapping": ["fashionvil_retrieval", "fashionvil_retrieval_sample100",
                            "fashionvil_tgir", "fashionvil_tgir_fashion200k", "fashionvil_ocir",
                            "fashionvil_accuracy", "fashionvil_macro_f1"],
    "processor_name_mapping": ["fashionvil_text_tokenizer", "fashionvil_image_transform"],
}


def test_importing_the_registry_module_registers_everything_in_a_fresh_process():
    script = (
        "import json, sys\n"
        "import mmf_fashionvil\n"
        "light = 'torch' not in sys.modules and 'mmf.common.registry' not in sys.modules\n"
        "import mmf_fashionvil.registry\n"
        "from mmf.common.registry import registry\n"
        f"kinds = {sorted(EXPECTED_NAMES)!r}\n"
        "print(json.dumps({'light': light, **{k: sorted(registry.mapping[k]) for k in kinds}}))\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["light"]  # `import mmf_fashionvil` alone (run at every start-up) is cheap
    for kind, names in EXPECTED_NAMES.items():
        assert set(names) <= set(found[kind]), (kind, found[kind])
