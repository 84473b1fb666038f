"""The ``python -m mmf_fashionvil.synthetic`` entry point of mmf_fashionvil.tools.synthetic."""
from mmf_fashionvil.tools.synthetic.cli import main

if __name__ == "__main__":
    main()
