"""Fixtures shared by several test files. Plain helpers and constants are in helpers.py."""
import pytest


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory):
    """A small synthetic catalog shared by the end-to-end tests (read-only for them)."""
    from mmf_fashionvil.tools.synthetic import generate_catalog

    out = tmp_path_factory.mktemp("catalog") / "catalog"
    generate_catalog(out, seed=3, num_products=40, image_size=64)
    return str(out)


@pytest.fixture(scope="session")
def make_tokenizer_checkpoint(tmp_path_factory):
    """A factory: ``make_tokenizer_checkpoint(image_size=64, codebook_size=12)`` writes a
    tiny image tokenizer checkpoint (helpers.save_tiny_image_tokenizer) into a fresh
    temporary folder and returns its path. A test module wraps it in its own
    ``tokenizer_checkpoint`` fixture with the sizes it needs."""
    from helpers import save_tiny_image_tokenizer

    def make(image_size=64, codebook_size=12):
        path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.ckpt"
        save_tiny_image_tokenizer(path, image_size=image_size, codebook_size=codebook_size)
        return str(path)

    return make


@pytest.fixture(autouse=True)
def registry_state_stays_in_its_test():
    """Dataset builds register state in MMF's process-wide registry: facts for the model
    (PAC class count, OCIR category count, image normalisation) and rc10's processor cache
    (``<dataset>_<processor>``, reused by the next build of that dataset whatever its
    config). ``mmf_run`` builds once per process; tests build many datasets in one, so the
    registry's state is put back as it was after each test."""
    import mmf_fashionvil.registry  # noqa: F401  (compat first, then MMF)
    from mmf.common.registry import registry

    state = registry.mapping["state"]
    before = dict(state)
    yield
    state.clear()
    state.update(before)
