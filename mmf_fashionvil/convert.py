"""The ``python -m mmf_fashionvil.convert`` entry point of mmf_fashionvil.tools.convert."""
import sys

from mmf_fashionvil.tools.convert import main

if __name__ == "__main__":
    sys.exit(main())
