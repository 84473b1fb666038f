from mmf_fashionvil.tools.visualize.cli import main

main()
