"""The converter of the authors' released checkpoint (``python -m mmf_fashionvil.convert``).

"Theirs" is rebuilt here from the module definitions of their fork (BrandonHanx/mmf): the
image encoder is a torchvision ResNet's children without avgpool / fc under
``image_encoder.model``; ``model.bert`` holds BERT's embeddings plus their three visual tables,
BERT's encoder and pooler; ``model.contrastive_norm.norm_s``; heads ``itm`` (NSP head),
``mlm`` (LM prediction head, decoder tied to the word embeddings), ``mpfc`` (transform +
linear), ``pac`` (cosine classifier with a [hidden, classes] ``projection``). Sizes are tiny:
a ResNet-10 at width 64 (the layout of ResNet-50's names) and the 2-layer test BERT.
"""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertEncoder,
    BertLMPredictionHead,
    BertOnlyNSPHead,
    BertPooler,
    BertPredictionHeadTransform,
)

from mmf_fashionvil.tools.convert import convert_state
from mmf_fashionvil.training.checkpoints import load_model_weights, read_checkpoint

from helpers import REPO, build_model, images, save_tiny_image_tokenizer, text_batch
from helpers import tiny_config

NUM_CODES, NUM_ATTRIBUTES, GRID = 12, 9, 4  # 64 px -> 2 x 2 grid


class CosineProjection(nn.Module):
    """Their PAC head's parameter layout: ``projection`` [hidden, classes]."""

    def __init__(self, hidden, classes):
        super().__init__()
        self.projection = nn.Parameter(torch.randn(hidden, classes))


def authors_model(bert_config):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1])
    root, bert = nn.Module(), nn.Module()
    root.image_encoder = nn.Module()
    root.image_encoder.model = nn.Sequential(*list(resnet.children())[:-2])
    bert.embeddings = BertEmbeddings(bert_config)
    width = bert_config.hidden_size
    bert.embeddings.token_type_embeddings_visual = nn.Embedding(bert_config.type_vocab_size, width)
    bert.embeddings.position_embeddings_visual = nn.Embedding(
        bert_config.max_position_embeddings, width)
    bert.embeddings.projection = nn.Linear(512, width)
    bert.encoder = BertEncoder(bert_config)
    bert.pooler = BertPooler(bert_config)
    root.model = nn.Module()
    root.model.bert = bert
    root.model.contrastive_norm = nn.Module()
    root.model.contrastive_norm.norm_s = nn.Parameter(torch.tensor([4.0]))
    mlm = BertLMPredictionHead(bert_config)
    mlm.decoder.weight = bert.embeddings.word_embeddings.weight
    mlm.decoder.bias = mlm.bias
    root.model.heads = nn.ModuleDict({
        "itm": BertOnlyNSPHead(bert_config),
        "mlm": mlm,
        "mpfc": nn.Sequential(BertPredictionHeadTransform(bert_config),
                              nn.Linear(width, NUM_CODES)),
        "pac": CosineProjection(width, NUM_ATTRIBUTES),
    })
    with torch.no_grad():  # every value distinct, so that a swapped name shows
        for parameter in root.parameters():
            parameter.normal_(0, 0.5)
        for name, buffer in root.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 1.5)
        root.model.contrastive_norm.norm_s.fill_(3.0)  # a scale (s > 0; learned from 4)
    return root.eval()


@pytest.fixture(scope="module")
def ours_and_theirs(tmp_path_factory):
    tokenizer = tmp_path_factory.mktemp("tok") / "tokenizer.ckpt"
    save_tiny_image_tokenizer(tokenizer, codebook_size=NUM_CODES)
    ours = build_model(tiny_config(
        image_encoder={"width_base": 64}, embedding_dim=None,
        training_tasks=["itc", "itm", "mlm", "mpfc", "pac"],
        heads={"mpfc": {"tokenizer_checkpoint": str(tokenizer)},
               "pac": {"num_attributes": NUM_ATTRIBUTES}}))
    theirs = authors_model(ours.bert_config)
    return ours, theirs


def test_conversion_is_complete_on_both_sides(ours_and_theirs):
    ours, theirs = ours_and_theirs
    source = theirs.state_dict()
    source["model.bert.embeddings.position_ids"] = torch.arange(512)[None]
    source["model.image_tokenizer.encoder.weight"] = torch.zeros(1)  # their VQ-VAE's entries
    converted, dropped = convert_state(source, GRID)
    own = ours.state_dict()
    # Ours: every entry comes from their checkpoint, with its shape.
    assert set(converted) == set(own)
    assert {k: tuple(v.shape) for k, v in converted.items()} == \
        {k: tuple(v.shape) for k, v in own.items()}
    # Theirs: only the two intentionally dropped kinds are left out.
    assert set(dropped) == {"model.bert.embeddings.position_ids",
                            "model.image_tokenizer.encoder.weight"}
    report = load_model_weights(ours, converted, "converted", require_all=True)
    assert report == {"missing": [], "unexpected": [], "mismatched": []}


def test_converted_model_computes_what_theirs_computes(ours_and_theirs):
    ours, theirs = ours_and_theirs
    load_model_weights(ours, convert_state(theirs.state_dict(), GRID)[0], "converted",
                       require_all=True)
    bert, heads = theirs.model.bert, theirs.model.heads
    norm_s = theirs.model.contrastive_norm.norm_s
    input_ids, input_mask = text_batch()
    image = images()
    with torch.no_grad():
        # Their forward, written out: text = BERT embeddings; image = ResNet grid -> projection;
        # joint = [text; visual] tables summed, one LayerNorm; additive -10000 mask.
        def encoder(embeddings, mask):
            additive = (1.0 - mask[:, None, None, :].float()) * -10000.0
            return bert.encoder(embeddings, attention_mask=additive)[0]

        text = encoder(bert.embeddings(input_ids), input_mask)
        weights = input_mask[..., None].float()
        text_pooled = (text * weights).sum(1) / weights.sum(1)
        grid = theirs.image_encoder.model(image).flatten(2).transpose(1, 2)
        visual = bert.embeddings.projection(grid)
        embeddings = bert.embeddings
        positions = torch.arange(input_ids.size(1))
        text_part = (embeddings.word_embeddings(input_ids)
                     + embeddings.position_embeddings(positions)
                     + embeddings.token_type_embeddings.weight[0])
        visual_part = (visual + embeddings.position_embeddings_visual.weight[:GRID]
                       + embeddings.token_type_embeddings_visual.weight[0])
        joint = embeddings.LayerNorm(torch.cat([text_part, visual_part], 1))
        joint_mask = torch.cat([input_mask, torch.ones(2, GRID, dtype=input_mask.dtype)], 1)
        itm_logits = heads["itm"](bert.pooler(encoder(joint, joint_mask)))
        projection = heads["pac"].projection
        pac_logits = F.normalize(visual.mean(1), dim=1) @ F.normalize(projection, dim=0)

        visual_tokens, image_embedding = ours.encode_image(image)
        _, text_embedding = ours.encode_text(input_ids, input_mask)
        our_itm = ours.itm_head(ours._pooled(ours.fuse(input_ids, input_mask, visual_tokens)))
        our_pac = ours.pac_head(image_embedding)
    torch.testing.assert_close(image_embedding, norm_s * F.normalize(visual.mean(1), dim=1))
    torch.testing.assert_close(text_embedding, norm_s * F.normalize(text_pooled, dim=1))
    torch.testing.assert_close(our_itm, itm_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(our_pac, pac_logits)


def test_unknown_entries_stop_the_conversion_with_their_names(ours_and_theirs):
    _, theirs = ours_and_theirs
    source = dict(theirs.state_dict(), **{"model.bert_2.encoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"model\.bert_2\.encoder\.weight.*--skip-unknown"):
        convert_state(source, GRID)
    _, dropped = convert_state(source, GRID, skip_unknown=True)
    assert "model.bert_2.encoder.weight" in dropped
    with pytest.raises(ValueError, match="position_embeddings_visual has 512 rows"):
        convert_state(theirs.state_dict(), 513)


def test_command_line_writes_a_checkpoint_resume_pretrained_loads(ours_and_theirs, tmp_path):
    ours, theirs = ours_and_theirs
    source, out = tmp_path / "fashionvil_final.pth", tmp_path / "converted.ckpt"
    torch.save({"model": {f"module.{k}": v for k, v in theirs.state_dict().items()}}, source)
    done = subprocess.run(
        [sys.executable, "-m", "mmf_fashionvil.convert", "--checkpoint", str(source),
         "--out", str(out), "--image-size", "64"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    saved = read_checkpoint(str(out))
    assert saved["conversion"]["source"] == str(source)
    assert torch.equal(saved["model"]["embeddings.visual_type_embedding"],
                       theirs.model.bert.embeddings.token_type_embeddings_visual.weight[0])
    assert saved["model"]["pac_head.logit_scale"] == 1.0  # theirs: unscaled cosines
    missing = subprocess.run(
        [sys.executable, "-m", "mmf_fashionvil.convert", "--checkpoint", str(tmp_path / "no.pth"),
         "--out", str(tmp_path / "never.ckpt")], cwd=REPO, capture_output=True, text=True,
        timeout=300)
    assert missing.returncode == 1 and "no.pth" in missing.stderr
    assert not (tmp_path / "never.ckpt").exists()
