"""``python -m mmf_fashionvil.tools.search``: see :mod:`mmf_fashionvil.tools.search.cli`."""
import sys

from mmf_fashionvil.tools.search.cli import main

sys.exit(main())
