"""Run at interpreter start-up by ``mmf_fashionvil_startup.pth`` (installed by setup.py).

It only registers an import hook (no heavy imports): MMF's modules are patched when,
and if, something imports them. Set MMF_FASHIONVIL_NO_COMPAT=1 to see stock MMF.
"""
import os

if os.environ.get("MMF_FASHIONVIL_NO_COMPAT") != "1":
    from mmf_fashionvil import compat

    compat.install()
