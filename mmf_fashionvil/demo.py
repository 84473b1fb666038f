"""The ``python -m mmf_fashionvil.demo`` entry point of mmf_fashionvil.tools.demo."""
from mmf_fashionvil.tools.demo import main

if __name__ == "__main__":
    main()
