from hfmeta.cli import main

main()
