from tgdl.projector.app import main

main()
