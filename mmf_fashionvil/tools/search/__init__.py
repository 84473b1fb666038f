"""Product search over a catalog with a trained FashionViL model.

    python -m mmf_fashionvil.tools.search index --checkpoint CKPT (--images DIR |
        --data-dir D --dataset fashiongen --split val) --out INDEX
    python -m mmf_fashionvil.tools.search query --index INDEX --checkpoint CKPT --text "..."
        [--image REF] [--top-k K] [--backend exact|faiss] [--grid out.png] [--html out.html]
    python -m mmf_fashionvil.tools.search serve --index INDEX --checkpoint CKPT [--port P]

Modules: ``index`` (catalog sources, the resumable chunked index on disk), ``query`` (query
embeddings, exact / faiss top-K), ``render`` (PNG grid, static HTML), ``serve`` (the web
page), ``cli`` (the command line). Built on :mod:`mmf_fashionvil.inference`.
"""
