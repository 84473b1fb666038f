"""``python -m mmf_fashionvil.tools.synthetic``: the catalog generator's command line."""
from mmf_fashionvil.tools.synthetic.cli import main

main()
