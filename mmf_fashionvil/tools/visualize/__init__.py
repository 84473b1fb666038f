"""Pictures of a trained FashionViL retrieval run (``python -m mmf_fashionvil.tools.visualize``).

    python -m mmf_fashionvil.tools.visualize --save-dir SAVE --data-dir DATA [--out DIR]
        [--queries 4] [--seed 0] [--split val] [--checkpoint CKPT] [--top-k 5]

Writes into ``--out`` (default ``SAVE/visualize``):

- ``retrieval_text_to_image.png`` / ``retrieval_image_to_text.png``: ``--queries`` random
  queries of the FashionGen split, each with its top-k candidates and their scores, the
  correct product's candidates framed in green. The ranking is the evaluation's: dot products
  of the embeddings of :mod:`mmf_fashionvil.inference`, every image of the split against
  every product's text, ties counted against the query (:mod:`.ranking`).
  ``retrieval.json`` holds what the grids show (candidates, scores, ranks) and the split's
  full-ranking R@K computed from the same embeddings.
- ``tsne.png``: a seeded t-SNE of the split's image and text embeddings, coloured by category.
- ``curves.png``: training loss (per task when logged), learning rate and the R@K keys of
  ``eval_log.jsonl`` over updates (:mod:`.curves`).

Modules: :mod:`.ranking` (the split, the ranking, the grids' data), :mod:`.curves` (the logs'
series and their figure), :mod:`.figures` (grids and t-SNE), :mod:`.cli` (the program).
"""


class VisualizeError(ValueError):
    """Bad input of the tool; the message names the file or option."""
