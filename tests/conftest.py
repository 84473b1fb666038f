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
