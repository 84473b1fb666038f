"""XMR fine-tuning config through mmf_run: full ranking ("general") and sample-100 ("kaleido")
side by side; the sample-100 draws are saved in the run's save dir, and two evaluations with
one seed rank the same candidates; optional ITM re-ranking with a pre-trained ITM head."""
import json
import shutil

import pytest
import torch

from helpers import MMF_RUN, final_metrics, run_command, short_run_args

XMR_TINY = "projects/fashionvil/configs/finetuning/xmr_tiny.yaml"
SHORT_RUN = short_run_args("fashiongen", updates=2)
NUM_GROUPS = 2


@pytest.fixture
def regrouped_catalog(tiny_catalog, tmp_path):
    """The tiny catalog's FashionGen part with its 8 val products put into two subcategories
    of four (product position p -> group p % 2), so each query has exactly 3 same-subcategory
    negatives (the catalog itself has one val product per subcategory). Returns (catalog,
    product position of each val item in sample_index order, group of each product)."""
    catalog = tmp_path / "catalog"
    shutil.copytree(f"{tiny_catalog}/datasets/FashionGen", catalog / "datasets/FashionGen")
    shutil.copytree(f"{tiny_catalog}/vocab", catalog / "vocab")
    val_path = catalog / "datasets/FashionGen/val_info.json"
    products = json.loads(val_path.read_text())
    groups = [position % NUM_GROUPS for position in range(len(products))]
    for product, group in zip(products, groups):
        product["subcategory_id"] = 500 + group
    val_path.write_text(json.dumps(products))
    # Evaluation items are every (product, image) pair, in file order.
    product_of_item = [p for p, product in enumerate(products) for _ in product["images"]]
    return catalog, product_of_item, groups


def test_two_evaluations_with_one_seed_rank_the_same_sample100_candidates(
        regrouped_catalog, tmp_path):
    catalog, product_of_item, groups = regrouped_catalog
    train_dir, test_dir = tmp_path / "train", tmp_path / "test"
    common = [MMF_RUN, f"config={XMR_TINY}", *SHORT_RUN, f"env.data_dir={catalog}"]
    code, output = run_command([*common, f"env.save_dir={train_dir}"])
    assert code == 0, output[-4000:]
    code, output = run_command([*common, "run_type=test", f"env.save_dir={test_dir}",
                                f"checkpoint.resume_file={train_dir}/current.ckpt"])
    assert code == 0, output[-4000:]

    saved = [json.loads((d / "kaleido_draws.json").read_text()) for d in (train_dir, test_dir)]
    assert saved[0] == saved[1]
    draws = saved[0]
    assert (draws["seed"], draws["num_negatives"], draws["num_draws"]) == (0, 100, 5)
    (draw_set,) = draws["draw_sets"].values()  # val and test are one file for FashionGen
    assert len(draw_set["draws"]) == 5
    num_products = len(groups)
    for draw in draw_set["draws"]:
        # 1,000 queries wanted, fewer items: every image is an ITR query, every product's
        # text a TIR query.
        assert draw["itr"]["queries"] == list(range(len(product_of_item)))
        assert sorted(product_of_item[s] for s in draw["tir"]["queries"]) == \
            list(range(num_products))
        for direction in ("itr", "tir"):
            for query, candidates in zip(draw[direction]["queries"],
                                         draw[direction]["candidates"]):
                own = product_of_item[query]
                products = [product_of_item[c] for c in candidates]
                assert products[0] == own
                # 100 negatives wanted, fewer there: ITR takes the text of every other
                # product, the 3 of the query's subcategory and those of the other one.
                if direction == "itr":
                    assert sorted(products[1:]) == [p for p in range(num_products) if p != own]
                    assert {groups[p] for p in products[1:4]} == {groups[own]}
                else:  # TIR: every image of every other product
                    assert len(products) == 1 + sum(1 for p in product_of_item if p != own)

    val, test = final_metrics(str(train_dir), "val"), final_metrics(str(test_dir), "test")
    prefix = "val/fashiongen"
    for protocol, metric in (("general", "fashionvil_retrieval"),
                             ("kaleido", "fashionvil_retrieval_sample100")):
        for direction in ("itr", "tir"):
            for k in (1, 5, 10):
                assert f"{prefix}/{metric}/{protocol}/{direction}_r@{k}" in val
    # Every query image ranks every product's text: sample-100's ITR is the full ranking's.
    for k in (1, 5, 10):
        assert val[f"{prefix}/fashionvil_retrieval_sample100/kaleido/itr_r@{k}"] == \
            pytest.approx(val[f"{prefix}/fashionvil_retrieval/general/itr_r@{k}"])
    assert {k.split("/", 1)[1]: v for k, v in test.items()} == pytest.approx(
        {k.split("/", 1)[1]: v for k, v in val.items()}, abs=1e-6)


def test_itm_reranking_with_the_pretrained_head(tiny_catalog, tmp_path):
    """Pre-train ITM for two updates, fine-tune XMR keeping that ITM head for re-ranking the
    top 3: the head stays as pre-trained, and the evaluation reports re-ranked keys beside
    the plain ones, equal to them from R@3 on (re-ranking only reorders the top 3)."""
    pretrain_dir, finetune_dir = tmp_path / "pretrain", tmp_path / "finetune"
    short = [*SHORT_RUN[2:], f"env.data_dir={tiny_catalog}"]
    code, output = run_command([
        MMF_RUN, "config=projects/fashionvil/configs/pretraining/itm_tiny.yaml",
        "model=fashionvil", "dataset=fashion_pretraining", *short,
        "dataset_config.fashion_pretraining.attributes_dir=None", f"env.save_dir={pretrain_dir}"])
    assert code == 0, output[-4000:]
    code, output = run_command([
        MMF_RUN, f"config={XMR_TINY}", *SHORT_RUN[:2], *short, f"env.save_dir={finetune_dir}",
        f"checkpoint.resume_file={pretrain_dir}/current.ckpt", "checkpoint.resume_pretrained=True",
        "model_config.fashionvil.heads.itm.rerank_top_k=3"])
    assert code == 0, output[-4000:]

    def itm_head(run_dir):
        state = torch.load(run_dir / "current.ckpt", weights_only=False)["model"]
        return {k: v for k, v in state.items() if k.startswith("itm_head.")}

    pretrained, fine_tuned = itm_head(pretrain_dir), itm_head(finetune_dir)
    assert set(pretrained) == set(fine_tuned) == {"itm_head.weight", "itm_head.bias"}
    for key in pretrained:
        assert torch.equal(pretrained[key], fine_tuned[key])

    val = final_metrics(str(finetune_dir), "val")
    prefix = "val/fashiongen"
    for metric, protocol in (("fashionvil_retrieval", "general"),
                             ("fashionvil_retrieval_sample100", "kaleido")):
        for direction in ("itr", "tir"):
            plain = f"{prefix}/{metric}/{protocol}/{direction}_r@"
            reranked = f"{prefix}/{metric}/{protocol}_itm_top3/{direction}_r@"
            assert 0 <= val[f"{reranked}1"] <= val[f"{reranked}5"]
            for k in (5, 10):
                assert val[f"{reranked}{k}"] == val[f"{plain}{k}"]
