"""The ``python -m mmf_fashionvil.prepare`` entry point of mmf_fashionvil.tools.prepare."""
from mmf_fashionvil.tools.prepare.cli import main

if __name__ == "__main__":
    main()
