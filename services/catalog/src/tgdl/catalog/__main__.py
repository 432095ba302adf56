from tgdl.catalog.app import main

main()
