"""``python -m mmf_fashionvil.tools.prepare`` (also ``python -m mmf_fashionvil.prepare``)."""
from mmf_fashionvil.tools.prepare.cli import main

if __name__ == "__main__":
    main()
